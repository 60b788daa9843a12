"""Serving: Document schemas, the Jina Executors, the indexer, the search Flow, graceful stop, metrics, deployment."""
