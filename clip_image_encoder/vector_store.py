"""A persistent vector index for image search: FAISS for the vectors, SQLite for what they point to.

FAISS (``IndexIDMap2`` over ``IndexFlatIP``) gives exact cosine search on l2-normalised
vectors and lets an entry be replaced by id, so re-indexing a file never duplicates it. Exact
search over a flat index answers in milliseconds up to about a million 512-d vectors; beyond
that, swap the flat index for an IVF/HNSW one here. SQLite maps each key (an image's path)
to its id and records the model, so that a query embedded by another model is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss
import numpy as np

from clip_image_encoder.similarity import l2_normalize

VECTORS_FILE = "vectors.faiss"
CATALOG_FILE = "catalog.sqlite"


class VectorIndex:
    """Keys (image paths or ids) with one embedding each, persisted under ``folder``."""

    def __init__(self, folder: Path, model_name: str | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._catalog = sqlite3.connect(self.folder / CATALOG_FILE, check_same_thread=False)
        self._catalog.executescript(
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL);"
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        self.model_name = self._meta("model", model_name)
        vectors_path = self.folder / VECTORS_FILE
        self._vectors = faiss.read_index(str(vectors_path)) if vectors_path.exists() else None

    def _meta(self, name: str, value: str | None) -> str | None:
        row = self._catalog.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            if value is not None:
                self._catalog.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
                self._catalog.commit()
            return value
        if value is not None and row[0] != value:
            raise ValueError(f"index in {self.folder} holds embeddings of {name} {row[0]!r}, not {value!r}")
        return row[0]

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return 0 if self._vectors is None else self._vectors.ntotal

    def keys(self) -> list[str]:
        """Every indexed key, in the order they were first indexed."""
        return [key for (key,) in self._catalog.execute("SELECT key FROM items ORDER BY id")]

    def upsert(self, keys: list[str], embeddings: np.ndarray) -> None:
        """Add or replace the embedding of each key; saved to disk before returning."""
        if not keys:
            return
        vectors = np.ascontiguousarray(l2_normalize(np.asarray(embeddings, dtype=np.float32)))
        if self._vectors is None:
            self._vectors = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        elif vectors.shape[1] != self._vectors.d:
            raise ValueError(f"index holds {self._vectors.d}-d embeddings, got {vectors.shape[1]}-d")
        self._catalog.executemany("INSERT OR IGNORE INTO items (key) VALUES (?)", [(key,) for key in keys])
        ids = np.array([self._id_of(key) for key in keys], dtype=np.int64)
        self._vectors.remove_ids(ids)
        self._vectors.add_with_ids(vectors, ids)
        faiss.write_index(self._vectors, str(self.folder / VECTORS_FILE))
        self._catalog.commit()

    def _id_of(self, key: str) -> int:
        return self._catalog.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()[0]

    def search(self, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The k nearest keys to one embedding, best first, with their cosine similarity."""
        if self._vectors is None or len(self) == 0:
            return []
        query = np.ascontiguousarray(l2_normalize(np.asarray(query, dtype=np.float32).reshape(1, -1)))
        if query.shape[1] != self._vectors.d:
            raise ValueError(f"index holds {self._vectors.d}-d embeddings, the query is {query.shape[1]}-d")
        scores, ids = self._vectors.search(query, min(k, len(self)))
        keys = dict(
            self._catalog.execute(
                f"SELECT id, key FROM items WHERE id IN ({','.join('?' * len(ids[0]))})", [int(i) for i in ids[0]]
            )
        )
        return [(keys[int(i)], float(score)) for i, score in zip(ids[0], scores[0], strict=True) if i >= 0]

    def close(self) -> None:
        self._catalog.close()
