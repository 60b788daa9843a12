"""The server store: a collection in Milvus (standalone or cluster), through pymilvus's ``MilvusClient``.

``--db http://HOST:19530`` (or ``https://``; a path names the collection: ``http://HOST:19530/photos``,
default `DEFAULT_COLLECTION`). The token (``user:password``, or a Zilliz Cloud API key) comes from
the ``MILVUS_TOKEN`` environment variable, never from a flag that ``ps`` shows.

The collection holds ``key`` (the primary key, so an upsert replaces) and ``vector`` (inner product
on l2-normalised vectors: cosine). The model and the index spec are collection properties
(``clip.model``, ``clip.index``). Milvus shards, replicates and persists: an indexer Executor on this
store holds no state and can be replicated like the encoder.

Reads use Session consistency, except the first read of a new store and the first read after it
wrote or deleted: those wait for Strong consistency (up to about 200 ms here), so that the process
that changed a key, or a command run after another, never gets a stale answer.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.errors import OptionError
from clip_image_encoder.search.stores.base import IndexSpec, Match, VectorStore

DEFAULT_COLLECTION = "images"
TOKEN_VARIABLE = "MILVUS_TOKEN"
KEY_BYTES = 4096
"""The longest key (a path, a url) the collection takes."""
WRITE_ROWS = 10_000
"""Rows per upsert call: about 20 MB of 512-d vectors, well under gRPC's 64 MB message limit."""
RANGE_LIMIT = 1_024
"""Neighbours a range search returns per image at most (Milvus caps a search at 16 384)."""
MODEL_PROPERTY, INDEX_PROPERTY = "clip.model", "clip.index"


def is_server_uri(db: str) -> bool:
    return urllib.parse.urlsplit(str(db)).scheme in ("http", "https", "tcp", "grpc")


def split_uri(db: str) -> tuple[str, str]:
    """``(server uri, collection)`` of ``http://HOST:PORT[/collection]``."""
    parts = urllib.parse.urlsplit(db)
    collection = parts.path.strip("/") or DEFAULT_COLLECTION
    if not collection.replace("_", "a").isalnum() or collection[0].isdigit():
        raise OptionError(f"--db {db}: the collection {collection!r} must be letters, digits and _, not first a digit")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", "")), collection


class MilvusStore(VectorStore):
    """One collection of a Milvus server; ``index`` applies when the collection is created."""

    def __init__(self, db: str, model_name: str | None = None, index: IndexSpec | None = None) -> None:
        from pymilvus import MilvusClient

        self.uri, self.collection = split_uri(db)
        self.location = f"{self.uri}, collection {self.collection}"
        self._client = MilvusClient(uri=self.uri, token=os.environ.get(TOKEN_VARIABLE, ""))
        self._strong_next = True  # what other clients wrote before this one opened is seen at once
        self.model_name, self._dimension = None, None
        self.index_spec = index or IndexSpec()
        if self._client.has_collection(self.collection):
            self._read_collection(index)
        self.claim(model_name)

    def _read_collection(self, asked: IndexSpec | None) -> None:
        described = self._client.describe_collection(self.collection)
        properties = described.get("properties", {})
        self.model_name = properties.get(MODEL_PROPERTY) or None
        recorded = properties.get(INDEX_PROPERTY)
        spec = IndexSpec.from_json(recorded) if recorded else IndexSpec()
        self.index_spec = spec.reopened(asked, self.location)
        vector = next(f for f in described["fields"] if f["name"] == "vector")
        self._dimension = int(vector["params"]["dim"])
        self._client.load_collection(self.collection)

    def _record_model(self, model_name: str) -> None:
        if self._dimension is not None:  # else the collection, not yet created, records it when it is
            self._client.alter_collection_properties(self.collection, {MODEL_PROPERTY: model_name})

    def _create_collection(self, dimension: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=KEY_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            "vector", index_type=self.index_spec.type, metric_type="IP", params=dict(self.index_spec.build)
        )
        self._client.create_collection(
            self.collection, schema=schema, index_params=index_params, consistency_level="Session"
        )
        properties = {INDEX_PROPERTY: self.index_spec.to_json()}
        if self.model_name is not None:
            properties[MODEL_PROPERTY] = self.model_name
        self._client.alter_collection_properties(self.collection, properties)
        self._dimension = dimension

    def _consistency(self) -> str:
        level, self._strong_next = ("Strong" if self._strong_next else "Session"), False
        return level

    def __len__(self) -> int:
        if self._dimension is None:
            return 0
        (row,) = self._client.query(
            self.collection, filter="", output_fields=["count(*)"], consistency_level=self._consistency()
        )
        return int(row["count(*)"])

    def upsert(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        if not len(keys):
            return
        vectors = np.ascontiguousarray(l2_normalize(np.asarray(embeddings, dtype=np.float32)))
        self.check_dimension(self._dimension, vectors.shape[1], "these are")
        too_long = [key for key in keys if len(key.encode()) > KEY_BYTES]
        if too_long:
            raise OptionError(f"keys longer than {KEY_BYTES} bytes cannot be indexed: {too_long[0][:80]}...")
        if self._dimension is None:
            self._create_collection(vectors.shape[1])
        for start in range(0, len(keys), WRITE_ROWS):
            self._upsert_rows(list(keys[start : start + WRITE_ROWS]), vectors[start : start + WRITE_ROWS])
        self._strong_next = True

    def _upsert_rows(self, keys: list[str], vectors: np.ndarray) -> None:
        """Milvus's own Upsert request, with the vectors as one packed float array.

        ``MilvusClient.upsert`` packs rows one float at a time into protobuf: about 6 000 vectors/s of
        512-d from one Python process, 85% of it in that packing (profiled), while the server takes over
        20 000/s. This builds the same ``UpsertRequest`` from pymilvus's generated messages, the floats
        parsed from their bytes at once, and sends it on the client's own channel (its token, its retries
        aside). Where a pymilvus release lacks these parts, the public call is used.
        """
        try:
            from google.protobuf.internal.encoder import _VarintBytes
            from pymilvus import DataType
            from pymilvus.client.utils import check_status
            from pymilvus.grpc_gen import milvus_pb2, schema_pb2

            stub = self._client._get_connection()._stub
        except (ImportError, AttributeError):
            rows = [{"key": key, "vector": vector} for key, vector in zip(keys, vectors, strict=True)]
            self._client.upsert(self.collection, rows)
            return
        packed = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        floats = schema_pb2.FloatArray.FromString(b"\x0a" + _VarintBytes(len(packed)) + packed)  # field 1, packed
        strings = schema_pb2.ScalarField(string_data=schema_pb2.StringArray(data=keys))
        request = milvus_pb2.UpsertRequest(
            collection_name=self.collection,
            num_rows=len(keys),
            fields_data=[
                schema_pb2.FieldData(type=DataType.VARCHAR, field_name="key", scalars=strings),
                schema_pb2.FieldData(
                    type=DataType.FLOAT_VECTOR,
                    field_name="vector",
                    vectors=schema_pb2.VectorField(dim=vectors.shape[1], float_vector=floats),
                ),
            ],
        )
        check_status(stub.Upsert(request).status)

    def delete(self, keys: Sequence[str]) -> None:
        if self._dimension is not None and len(keys):
            self._client.delete(self.collection, ids=list(keys))
            self._strong_next = True

    def _search_params(self, **extra: Any) -> dict:
        return {"metric_type": "IP", "params": {**self.index_spec.search, **extra}}

    def search_many(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        queries = np.ascontiguousarray(l2_normalize(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)))
        if self._dimension is None:
            return [[] for _ in queries]
        self.check_dimension(self._dimension, queries.shape[1], "the query is")
        found = self._client.search(
            self.collection,
            data=list(queries),
            limit=k,
            search_params=self._search_params(),
            consistency_level=self._consistency(),
        )
        return [[(hit["id"], float(hit["distance"])) for hit in hits] for hits in found]

    def _get(self, keys: Sequence[str], fields: list[str]) -> list[dict]:
        if self._dimension is None:
            return []
        rows = []
        for start in range(0, len(keys), WRITE_ROWS):
            chunk = list(keys[start : start + WRITE_ROWS])
            level = self._consistency()
            rows += self._client.get(self.collection, ids=chunk, output_fields=fields, consistency_level=level)
        return rows

    def contains(self, keys: Sequence[str]) -> set[str]:
        return {row["key"] for row in self._get(keys, ["key"])}

    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        found = {row["key"]: row["vector"] for row in self._get(keys, ["key", "vector"])}
        return np.array([found[key] for key in keys], np.float32)

    def similar_pairs(self, threshold: float, progress: bool = False) -> Iterator[tuple[str, str]]:
        """Each stored vector, read in batches, is a range query in the collection's own index."""
        if self._dimension is None:
            return
        from tqdm import tqdm

        batches = self._client.query_iterator(
            self.collection, batch_size=1000, output_fields=["key", "vector"], consistency_level=self._consistency()
        )
        params = self._search_params(radius=float(threshold) - 1e-6, range_filter=1.0 + 1e-6)
        with tqdm(desc="comparing", unit="img", disable=not progress) as bar:
            while rows := batches.next():
                found = self._client.search(
                    self.collection,
                    data=[np.asarray(row["vector"], np.float32) for row in rows],
                    limit=RANGE_LIMIT,
                    search_params=params,
                )
                for row, hits in zip(rows, found, strict=True):
                    yield from ((row["key"], hit["id"]) for hit in hits if hit["id"] != row["key"])
                bar.update(len(rows))
        batches.close()

    def flush(self) -> None:
        if self._dimension is not None:
            self._client.flush(self.collection)

    def close(self) -> None:
        self._client.close()
