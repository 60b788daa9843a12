"""The search Flow's second Executor: stores embeddings on ``/index``, answers ``/search`` with matches."""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.documents import ImageDocument, ImageMatch
from clip_image_encoder.shutdown import serve_gracefully
from clip_image_encoder.vector_store import VectorIndex


class ImageIndexer(Executor):
    """Persists embeddings in a `VectorIndex` folder; the encoder in front of it fills ``embedding``.

    Every ``/index`` request is on disk before it is answered, and a stop waits for the requests in
    flight (`shutdown`), so nothing indexed is lost.
    """

    def __init__(self, db: str = "index", stop_timeout_s: int = 25, *args: Any, **kwargs: Any) -> None:
        """:param db: index folder, created if missing; re-indexing a ``url`` replaces its entry.
        :param stop_timeout_s: on SIGTERM or SIGINT, seconds to wait for requests in flight before stopping.
        """
        super().__init__(*args, **kwargs)
        self.index = VectorIndex(Path(db))
        self._one_at_a_time = asyncio.Lock()  # FAISS and the catalogue are not safe for concurrent writes
        self._in_flight = serve_gracefully(stop_timeout_s)

    @requests(on="/index")
    async def add(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """Index every Document that has an embedding, keyed by its ``url`` (or id)."""
        ready = [doc for doc in docs if doc.embedding is not None]
        if ready:
            keys, vectors = [doc.url or doc.id for doc in ready], np.stack([np.asarray(d.embedding) for d in ready])
            async with self._in_flight.track(), self._one_at_a_time:
                await asyncio.to_thread(self.index.upsert, keys, vectors)
        return docs

    @requests(on="/search")
    async def search(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Fill ``matches`` with the ``parameters['k']`` (default 10) nearest indexed images."""
        k = int((parameters or {}).get("k", 10))
        async with self._in_flight.track(), self._one_at_a_time:
            for doc in docs:
                if doc.embedding is not None:
                    found = await asyncio.to_thread(self.index.search, np.asarray(doc.embedding), k)
                    doc.matches = DocList[ImageMatch]([ImageMatch(key=key, score=score) for key, score in found])
        return docs

    def close(self) -> None:
        self.index.close()
        super().close()
