"""CLIP image embeddings for search: decode, preprocess in batches, embed, per Document."""

__version__ = "0.1.0"
