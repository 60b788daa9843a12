"""Search over embeddings: the vector index, near-duplicates, indexing folders, result pages."""
