"""What every vector store promises, and the index types they build.

A store holds one l2-normalised embedding per key (an image's path, a Document's ``url`` or id) and
answers cosine similarities. It records the checkpoint whose embeddings it holds and refuses
another's, records how it is indexed (`IndexSpec`), replaces a key that is indexed again, deletes
keys, and finds every pair above a similarity (the range search behind ``duplicates``) without
copying the collection into memory. `stores.embedded` and `stores.milvus` keep these promises;
``tests/search/test_stores.py`` holds both to them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from clip_image_encoder.errors import IndexMismatchError, OptionError

Match = tuple[str, float]
"""A key and its cosine similarity to the query."""

INDEX_TYPES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
}
"""Milvus's names for the index types, each with its build parameters and its search parameters (with
their defaults). FLAT is exact; IVF_* read only ``nprobe`` of ``nlist`` clusters (IVF_SQ8 keeps one byte per
dimension: a quarter of the memory); HNSW walks a graph."""

DEFAULT_INDEX = "IVF_FLAT"
"""The approximate index that `benchmarks/VECTOR_STORES.md` measured: recall@10 >= 0.95 at 1 M vectors on
both stores, in a few milliseconds per query."""


@dataclass(frozen=True)
class IndexSpec:
    """An index type with its parameters, as ``TYPE`` or ``TYPE:name=value,...`` (``IVF_FLAT:nprobe=64``)."""

    type: str = DEFAULT_INDEX
    build: dict[str, int] = field(default_factory=dict)
    """Fixed when the index is built (``nlist``, ``M``, ``efConstruction``)."""
    search: dict[str, int] = field(default_factory=dict)
    """May change from one opening to the next (``nprobe``, ``ef``)."""

    def __post_init__(self) -> None:
        """Parameters not given take their type's defaults (`INDEX_TYPES`)."""
        build, search = INDEX_TYPES[self.type]
        object.__setattr__(self, "build", {**build, **self.build})
        object.__setattr__(self, "search", {**search, **self.search})

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """The spec a flag or an Executor's ``index`` parameter gives; missing parameters take their defaults."""
        kind, _, listed = text.strip().partition(":")
        kind = kind.strip().upper()
        if kind not in INDEX_TYPES:
            raise OptionError(f"index {text!r}: the type must be one of {', '.join(INDEX_TYPES)}")
        build, search = INDEX_TYPES[kind]
        build, search = dict(build), dict(search)
        for item in filter(None, (part.strip() for part in listed.split(","))):
            name, _, value = item.partition("=")
            target = build if name in build else search if name in search else None
            if target is None or not value.strip().isdigit() or int(value) < 1:
                known = ", ".join([*build, *search]) or "none"
                raise OptionError(f"index {text!r}: {item!r} is not name=positive integer of {kind} ({known})")
            target[name] = int(value)
        return cls(kind, build, search)

    @classmethod
    def from_json(cls, text: str) -> IndexSpec:
        recorded = json.loads(text)
        return cls(recorded["type"], recorded.get("build", {}), recorded.get("search", {}))

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "build": self.build, "search": self.search}, sort_keys=True)

    def __str__(self) -> str:
        parameters = ",".join(f"{name}={value}" for name, value in {**self.build, **self.search}.items())
        return f"{self.type}:{parameters}" if parameters else self.type

    @property
    def exact(self) -> bool:
        return self.type == "FLAT"

    def reopened(self, asked: IndexSpec | None, where: str) -> IndexSpec:
        """This recorded spec, with ``asked``'s search parameters; an `OptionError` if ``asked`` would rebuild it."""
        if asked is None:
            return self
        if (asked.type, asked.build) != (self.type, self.build):
            raise OptionError(
                f"{where} is indexed as {self}, not {asked}: its search parameters may change "
                f"({', '.join(self.search) or 'none'}), its type and build parameters only by indexing it anew"
            )
        return IndexSpec(self.type, self.build, asked.search)


class VectorStore(ABC):
    """Keys with one embedding each; cosine search, replace, delete, range search; the model check."""

    location: str
    """Where the store is, for messages: a folder, or a server's uri and collection."""
    model_name: str | None
    """The checkpoint whose embeddings the store holds (`models.identity.model_identity`); set by the first claim."""
    index_spec: IndexSpec

    def claim(self, model_name: str | None) -> None:
        """Record ``model_name`` as the store's model, or refuse it when the store holds another model's embeddings.

        Embeddings of two checkpoints (or an image tower and another checkpoint's text tower) live in
        different spaces: mixing them gives meaningless scores, silently. None claims nothing.
        """
        self.check_model(model_name)
        if model_name is not None and self.model_name is None:
            self._record_model(model_name)
            self.model_name = model_name

    def check_model(self, model_name: str | None) -> None:
        """Refuse embeddings of ``model_name`` when the store holds another model's (a search must not claim)."""
        if model_name is not None and self.model_name is not None and model_name != self.model_name:
            raise IndexMismatchError(
                f"the index in {self.location} holds embeddings of model {self.model_name!r}, and these come from "
                f"{model_name!r}: they cannot be compared. Use the model the index was built with "
                f"(--model {self.model_name}), or build another index for this model."
            )

    def check_dimension(self, expected: int | None, given: int, what: str) -> None:
        if expected is not None and given != expected:
            raise IndexMismatchError(f"the index in {self.location} holds {expected}-d embeddings, {what} {given}-d")

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def search(self, query: np.ndarray, k: int = 10) -> list[Match]:
        """The k nearest keys to one embedding, best first, with their cosine similarity."""
        return self.search_many(np.asarray(query, dtype=np.float32).reshape(1, -1), k)[0]

    def describe(self) -> str:
        return f"{len(self)} embeddings in {self.location}, indexed {self.index_spec}"

    @abstractmethod
    def _record_model(self, model_name: str) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def upsert(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Add or replace the embedding of each key; durable before it returns."""

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Forget these keys (absent ones are ignored)."""

    @abstractmethod
    def search_many(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        """The k nearest keys to each row of ``queries``, best first."""

    @abstractmethod
    def contains(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the store holds (what a resumed bulk run skips)."""

    @abstractmethod
    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        """The l2-normalised embeddings of ``keys``, row for row (every key must be held)."""

    @abstractmethod
    def similar_pairs(self, threshold: float, progress: bool = False) -> Iterator[tuple[str, str]]:
        """Every pair of keys at cosine >= ``threshold``, each pair once: a range search in the store's index."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything written durable and quick to reopen (before a stop)."""

    @abstractmethod
    def close(self) -> None: ...
