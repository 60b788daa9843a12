"""The search Flow's second Executor: stores embeddings on ``/index``, answers ``/search`` with matches.

Sharded (``shards: N``, with `ShardMerger` as ``uses_after`` and polling ``ALL``, as `service.flow.INDEXER`
says), every shard gets every request: on ``/index`` each keeps the Documents whose key hashes to it
(`shard_of`), so a key lives in exactly one shard and re-indexing replaces it there; on ``/search`` each answers its own
top k and `ShardMerger` merges them into one top k. The merger is a ``uses_after`` Executor rather
than Jina's own reduction because Jina 3.34's head rebuilds the Document schema from JSON Schema,
which turns ``bytes_`` into a string, and fails every sharded request.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
import heapq
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.errors import IndexMismatchError
from clip_image_encoder.search.vector_index import VectorIndex
from clip_image_encoder.service.documents import ImageDocument, ImageMatch
from clip_image_encoder.service.shutdown import serve_gracefully

DEFAULT_K = 10


def shard_of(key: str, shards: int) -> int:
    """The shard that holds ``key``: a hash that is the same in every process (Python's ``hash`` is not)."""
    return zlib.crc32(key.encode()) % shards


def merge_top_k(match_lists: Iterable[Iterable[ImageMatch]], k: int) -> list[ImageMatch]:
    """The ``k`` best of several shards' matches, best first; shards hold disjoint keys."""
    return heapq.nlargest(k, (match for matches in match_lists for match in matches), key=lambda match: match.score)


class ImageIndexer(Executor):
    """Persists embeddings in a `VectorIndex` folder; the encoder in front of it fills ``embedding``.

    Every ``/index`` request is on disk before it is answered, and a stop waits for the requests in
    flight (`service.shutdown`), so nothing indexed is lost.
    """

    def __init__(self, db: str = "index", stop_timeout_s: int = 25, *args: Any, **kwargs: Any) -> None:
        """:param db: index folder, created if missing; re-indexing a ``url`` replaces its entry. Shard N of a
            sharded indexer keeps its part in ``db/shard-N``.
        :param stop_timeout_s: on SIGTERM or SIGINT, seconds to wait for requests in flight before stopping.
        """
        super().__init__(*args, **kwargs)
        self.shards = getattr(self.runtime_args, "shards", None) or 1
        self.shard_id = getattr(self.runtime_args, "shard_id", None) or 0
        self.index = VectorIndex(Path(db) / f"shard-{self.shard_id}" if self.shards > 1 else Path(db))
        self._one_at_a_time = asyncio.Lock()  # FAISS and the catalogue are not safe for concurrent writes
        self._in_flight = serve_gracefully(stop_timeout_s)

    @requests(on="/index")
    async def add(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """Index every Document that has an embedding (and, sharded, belongs here), keyed by ``url`` or id.

        A Document embedded by another model than the index's gets an ``error`` and is not indexed.
        """
        ready = [
            doc
            for doc in docs
            if doc.embedding is not None and shard_of(doc.url or doc.id, self.shards) == self.shard_id
        ]
        if ready:
            await self._in_flight.answer(self._add, ready, one_at_a_time=self._one_at_a_time)
        return docs

    def _add(self, docs: list[ImageDocument]) -> None:
        accepted = []
        for doc in docs:
            try:
                self.index.claim(doc.model)
                accepted.append(doc)
            except IndexMismatchError as exc:
                doc.error = f"not indexed: {exc}"
        if accepted:
            keys = [doc.url or doc.id for doc in accepted]
            self.index.upsert(keys, np.stack([np.asarray(doc.embedding) for doc in accepted]))

    @requests(on="/search")
    async def search(
        self, docs: DocList[ImageDocument], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """Fill ``matches`` with the ``parameters['k']`` (default 10) nearest indexed images.

        A query (image or text) embedded by another model than the index's gets an ``error`` instead.
        """
        k = int((parameters or {}).get("k", DEFAULT_K))
        await self._in_flight.answer(self._search_all, docs, k, one_at_a_time=self._one_at_a_time)
        return docs

    def _search_all(self, docs: DocList[ImageDocument], k: int) -> None:
        for doc in docs:
            if doc.embedding is not None:
                self._search(doc, k)
            elif doc.error is None:
                doc.error = (
                    "nothing to search with: send an image, or a text to a search Flow whose model has a "
                    "text tower (CLIP, SigLIP)"
                )

    def _search(self, query: ImageDocument, k: int) -> None:
        try:
            self.index.check_model(query.model)
            found = self.index.search(np.asarray(query.embedding), k)
        except IndexMismatchError as exc:
            query.error = f"cannot search this index: {exc}"
            return
        query.matches = DocList[ImageMatch]([ImageMatch(key=key, score=score) for key, score in found])

    def close(self) -> None:
        self.index.close()
        super().close()


class ShardMerger(Executor):
    """A sharded indexer's ``uses_after``: one answer from every shard's answer to the same request."""

    @requests(on="/search")
    def merge_matches(
        self,
        docs: DocList[ImageDocument],
        docs_matrix: list[DocList[ImageDocument]] | None = None,
        parameters: dict | None = None,
        **kwargs: Any,
    ) -> DocList[ImageDocument]:
        """Each query's matches: the best ``parameters['k']`` of all the shards' matches."""
        answers = docs_matrix or [docs]
        k = int((parameters or {}).get("k", DEFAULT_K))
        merged = answers[0]
        for position, doc in enumerate(merged):
            if doc.embedding is not None:
                shard_matches = [answer[position].matches or [] for answer in answers]
                doc.matches = DocList[ImageMatch](merge_top_k(shard_matches, k))
        return merged

    @requests(on="/index")
    def first_answer(
        self, docs: DocList[ImageDocument], docs_matrix: list[DocList[ImageDocument]] | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """The shards answer the same Documents to ``/index``: one copy of them."""
        return (docs_matrix or [docs])[0]
