"""Encoding: sources in batches through a model to embeddings (images and texts), their output form, metrics."""
