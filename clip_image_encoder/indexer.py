"""The search Flow's second Executor: stores embeddings on ``/index``, answers ``/search`` with matches."""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
from pathlib import Path
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.documents import ImageDocument, ImageMatch
from clip_image_encoder.vector_store import VectorIndex


class ImageIndexer(Executor):
    """Persists embeddings in a `VectorIndex` folder; the encoder in front of it fills ``embedding``."""

    def __init__(self, db: str = "index", *args: Any, **kwargs: Any) -> None:
        """:param db: index folder, created if missing; re-indexing a ``url`` replaces its entry."""
        super().__init__(*args, **kwargs)
        self.index = VectorIndex(Path(db))

    @requests(on="/index")
    def add(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """Index every Document that has an embedding, keyed by its ``url`` (or id)."""
        ready = [doc for doc in docs if doc.embedding is not None]
        if ready:
            self.index.upsert([doc.url or doc.id for doc in ready], np.stack([np.asarray(d.embedding) for d in ready]))
        return docs

    @requests(on="/search")
    def search(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Fill ``matches`` with the ``parameters['k']`` (default 10) nearest indexed images."""
        k = int((parameters or {}).get("k", 10))
        for doc in docs:
            if doc.embedding is not None:
                found = self.index.search(np.asarray(doc.embedding), k)
                doc.matches = DocList[ImageMatch]([ImageMatch(key=key, score=score) for key, score in found])
        return docs

    def close(self) -> None:
        self.index.close()
        super().close()
