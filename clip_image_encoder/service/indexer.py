"""The search Flow's last Executor: stores embeddings on ``/index``, answers ``/search`` with matches.

On a Milvus server (``db: http://HOST:19530``) the indexer holds no state: Milvus shards, replicates and
persists, so the indexer is replicated like the encoder (``replicas: N``) and never sharded.

On the embedded store (``db`` a folder), sharded (``shards: N``, with `ShardMerger` as ``uses_after``
and polling ``ALL``, as `service.flow.INDEXER` says), every shard gets every request: on ``/index`` each
keeps the Documents whose key hashes to it (`shard_of`), so a key lives in exactly one shard and
re-indexing replaces it there; on ``/search`` each answers its own top k and `ShardMerger` merges them
into one top k. The merger is a ``uses_after`` Executor rather
than Jina's own reduction because Jina 3.34's head rebuilds the Document schema from JSON Schema,
which turns ``bytes_`` into a string, and fails every sharded request.
"""

# No `from __future__ import annotations` here: Jina reads the request schemas from live type hints.
import asyncio
import heapq
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from clip_image_encoder.errors import IndexMismatchError, OptionError
from clip_image_encoder.search.stores import is_server_uri, open_store
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
    """Persists embeddings in a vector store (`search.stores`); the encoder in front of it fills ``embedding``.

    Every ``/index`` request is durable before it is answered, and a stop waits for the requests in
    flight (`service.shutdown`) and flushes the store, so nothing indexed is lost.
    """

    def __init__(
        self, db: str = "index", index: str | None = None, stop_timeout_s: int = 25, *args: Any, **kwargs: Any
    ) -> None:
        """:param db: the store: a folder (created if missing; shard N of a sharded indexer keeps its part in
            ``db/shard-N``), or a Milvus server ``http://HOST:19530[/COLLECTION]`` (token from MILVUS_TOKEN).
            Re-indexing a ``url`` replaces its entry.
        :param index: index type of a new store, ``TYPE[:name=value,...]`` (`search.stores.IndexSpec`).
        :param stop_timeout_s: on SIGTERM or SIGINT, seconds to wait for requests in flight before stopping.
        """
        super().__init__(*args, **kwargs)
        self.shards = getattr(self.runtime_args, "shards", None) or 1
        self.shard_id = getattr(self.runtime_args, "shard_id", None) or 0
        if is_server_uri(db) and self.shards > 1:
            raise OptionError(f"{db} is a Milvus server, which shards itself: replicate the indexer, do not shard it")
        folder_of_shard = f"{db.rstrip('/')}/shard-{self.shard_id}" if self.shards > 1 else db
        self.index = open_store(folder_of_shard, index=index)
        self._one_at_a_time = asyncio.Lock()  # FAISS and SQLite are not safe for concurrent writes
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

    @requests(on="/delete")
    async def delete(self, docs: DocList[ImageDocument], **kwargs: Any) -> DocList[ImageDocument]:
        """Forget the key (``url``, or id) of every Document; keys the store does not hold are ignored."""
        keys = [doc.url or doc.id for doc in docs if shard_of(doc.url or doc.id, self.shards) == self.shard_id]
        if keys:
            await self._in_flight.answer(self.index.delete, keys, one_at_a_time=self._one_at_a_time)
        return docs

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
        """One search of the store for every query that has an embedding of the store's model."""
        queries = []
        for doc in docs:
            if doc.embedding is None:
                if doc.error is None:
                    doc.error = (
                        "nothing to search with: send an image, or a text to a search Flow whose model has a "
                        "text tower (CLIP, SigLIP)"
                    )
                continue
            try:
                self.index.check_model(doc.model)
                queries.append(doc)
            except IndexMismatchError as exc:
                doc.error = f"cannot search this index: {exc}"
        if not queries:
            return
        try:
            found = self.index.search_many(np.stack([np.asarray(doc.embedding) for doc in queries]), k)
        except IndexMismatchError as exc:  # another dimension than the store's
            for doc in queries:
                doc.error = f"cannot search this index: {exc}"
            return
        for doc, matches in zip(queries, found, strict=True):
            doc.matches = DocList[ImageMatch]([ImageMatch(key=key, score=score) for key, score in matches])

    def close(self) -> None:
        self.index.flush()
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

    @requests(on=["/index", "/delete"])
    def first_answer(
        self, docs: DocList[ImageDocument], docs_matrix: list[DocList[ImageDocument]] | None = None, **kwargs: Any
    ) -> DocList[ImageDocument]:
        """The shards answer the same Documents to ``/index``: one copy of them."""
        return (docs_matrix or [docs])[0]
