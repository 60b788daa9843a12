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

from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.errors import IndexMismatchError

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
        recorded = self._catalog.execute("SELECT value FROM meta WHERE name = 'model'").fetchone()
        self.model_name: str | None = recorded[0] if recorded else None
        """The checkpoint whose embeddings the index holds (`models.identity.model_identity`); set by the first
        claim."""
        self.claim(model_name)
        vectors_path = self.folder / VECTORS_FILE
        self._vectors = faiss.read_index(str(vectors_path)) if vectors_path.exists() else None

    def claim(self, model_name: str | None) -> None:
        """Record ``model_name`` as the index's model, or refuse it when the index holds another model's embeddings.

        Embeddings of two checkpoints (or an image tower and another checkpoint's text tower) live in
        different spaces: mixing them gives meaningless scores, silently. None claims nothing.
        """
        self.check_model(model_name)
        if model_name is None or self.model_name is not None:
            return
        self._catalog.execute("INSERT INTO meta VALUES ('model', ?)", (model_name,))
        self._catalog.commit()
        self.model_name = model_name

    def check_model(self, model_name: str | None) -> None:
        """Refuse embeddings of ``model_name`` when the index holds another model's (a search must not claim)."""
        if model_name is not None and self.model_name is not None and model_name != self.model_name:
            raise IndexMismatchError(
                f"the index in {self.folder} holds embeddings of model {self.model_name!r}, and these come from "
                f"{model_name!r}: they cannot be compared. Use the model the index was built with "
                f"(--model {self.model_name}), or build another index for this model."
            )

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
            raise IndexMismatchError(f"the index holds {self._vectors.d}-d embeddings, these are {vectors.shape[1]}-d")
        self._catalog.executemany("INSERT OR IGNORE INTO items (key) VALUES (?)", [(key,) for key in keys])
        ids = np.array([self._id_of(key) for key in keys], dtype=np.int64)
        self._vectors.remove_ids(ids)
        self._vectors.add_with_ids(vectors, ids)
        faiss.write_index(self._vectors, str(self.folder / VECTORS_FILE))
        self._catalog.commit()

    def _id_of(self, key: str) -> int:
        return self._catalog.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()[0]

    def items(self) -> tuple[list[str], np.ndarray]:
        """Every key with its l2-normalised embedding, ``(N, D)`` row for row, in the index's own order."""
        if self._vectors is None or len(self) == 0:
            return [], np.zeros((0, 0), np.float32)
        flat = faiss.downcast_index(self._vectors.index)
        ids = faiss.vector_to_array(self._vectors.id_map)
        keys_by_id = dict(self._catalog.execute("SELECT id, key FROM items"))
        return [keys_by_id[int(i)] for i in ids], flat.reconstruct_n(0, flat.ntotal)

    def search(self, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The k nearest keys to one embedding, best first, with their cosine similarity."""
        if self._vectors is None or len(self) == 0:
            return []
        query = np.ascontiguousarray(l2_normalize(np.asarray(query, dtype=np.float32).reshape(1, -1)))
        if query.shape[1] != self._vectors.d:
            raise IndexMismatchError(f"the index holds {self._vectors.d}-d embeddings, the query is {query.shape[1]}-d")
        scores, ids = self._vectors.search(query, min(k, len(self)))
        keys = dict(
            self._catalog.execute(
                f"SELECT id, key FROM items WHERE id IN ({','.join('?' * len(ids[0]))})", [int(i) for i in ids[0]]
            )
        )
        return [(keys[int(i)], float(score)) for i, score in zip(ids[0], scores[0], strict=True) if i >= 0]

    def close(self) -> None:
        self._catalog.close()
