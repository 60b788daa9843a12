"""Vector stores: where embeddings are kept and searched. ``--db`` chooses one.

    --db FOLDER             `EmbeddedStore`: FAISS + SQLite in a folder, no server (the default)
    --db http://HOST:PORT   `MilvusStore`: a collection of a Milvus standalone server or cluster

Both keep the promises of `VectorStore` (``tests/search/test_stores.py`` runs one suite on both).
"""

from __future__ import annotations

from pathlib import Path

from clip_image_encoder.search.stores.base import DEFAULT_INDEX, INDEX_TYPES, IndexSpec, Match, VectorStore
from clip_image_encoder.search.stores.milvus import is_server_uri

__all__ = ["DEFAULT_INDEX", "INDEX_TYPES", "IndexSpec", "Match", "VectorStore", "is_server_uri", "open_store"]


def open_store(db: str | Path, model_name: str | None = None, index: str | IndexSpec | None = None) -> VectorStore:
    """The store ``db`` names, claimed for ``model_name`` when given; ``index`` (a spec) applies when it is new."""
    spec = IndexSpec.parse(index) if isinstance(index, str) else index
    if is_server_uri(str(db)):
        from clip_image_encoder.search.stores.milvus import MilvusStore

        return MilvusStore(str(db), model_name, spec)
    from clip_image_encoder.search.stores.embedded import EmbeddedStore

    return EmbeddedStore(Path(db), model_name, spec)
