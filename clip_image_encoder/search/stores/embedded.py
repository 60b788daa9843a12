"""The embedded store: a folder with SQLite for keys and vectors and FAISS for the search, no server.

SQLite is the record: every key with its vector, the model and the index spec, committed before
`upsert` returns, so a crash loses nothing. The FAISS index is built from it and saved beside it by
`flush` (and `close`); an index file older than the record is rebuilt from the record on opening.

    FLAT      exact inner product (``IndexIDMap2`` over ``IndexFlatIP``)
    IVF_FLAT  ``nlist`` k-means clusters, ``nprobe`` of them read per query; exact until the store holds
    IVF_SQ8   ``TRAIN_PER_LIST`` x ``nlist`` vectors, then trained on a sample of them (IVF_SQ8: one byte
              per dimension)

Why FAISS + SQLite and not Milvus Lite as the default: at 100 k vectors Milvus Lite inserted several times
slower and answered slower (`benchmarks/VECTOR_STORES.md`), locks its file to one process, and is a beta.
Milvus itself is the server store (`stores.milvus`), for collections that outgrow one machine.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.errors import OptionError
from clip_image_encoder.search.stores.base import IndexSpec, Match, VectorStore

CATALOG_FILE = "catalog.sqlite"
VECTORS_FILE = "vectors.faiss"
TRAIN_PER_LIST = 39
"""An IVF index is trained once the store holds this many vectors per cluster (FAISS's own minimum)."""
TRAIN_SAMPLE_PER_LIST = 64
"""Vectors per cluster that k-means trains on (a random sample of the store)."""
RETRAIN_GROWTH = 8
"""An IVF index is trained again on a new sample whenever the store has grown this many times since."""
SQL_CHUNK = 10_000
"""Keys per SQL statement (SQLite allows 32 766 parameters)."""
EMBEDDED_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8")


def _unit(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(l2_normalize(np.asarray(vectors, dtype=np.float32)))


def _chunks(items: Sequence, size: int = SQL_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EmbeddedStore(VectorStore):
    """A store in ``folder``; ``index`` applies when the folder is new (later, only its search parameters)."""

    def __init__(self, folder: Path, model_name: str | None = None, index: IndexSpec | None = None) -> None:
        self.folder = Path(folder)
        self.location = str(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.folder / CATALOG_FILE, check_same_thread=False, isolation_level=None)
        self._db.executescript(
            "PRAGMA page_size=16384;"  # a new file only: 7 rows of a 512-d vector per page (at 4096, one: half empty)
            "PRAGMA journal_mode=WAL;"
            "PRAGMA synchronous=NORMAL;"  # with WAL: a commit survives the process; only a power cut may lose one
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, vector BLOB);"
        )
        self.model_name = self._meta("model")
        self.index_spec = self._open_spec(index)
        self._dimension = int(self._meta("dimension") or 0) or None
        self._vectors: faiss.Index | None = None
        self._vectors = self._load_or_rebuild()
        self._dirty = False
        self.claim(model_name)

    # -- the record ----------------------------------------------------------------------------------

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, name: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, str(value)))

    def _record_model(self, model_name: str) -> None:
        self._set_meta("model", model_name)

    def _open_spec(self, asked: IndexSpec | None) -> IndexSpec:
        recorded = self._meta("index")
        if recorded is None:  # a new folder, or one written before index types were recorded (always exact)
            has_items = self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
            spec = IndexSpec.parse("FLAT") if has_items else (asked or IndexSpec())
            if spec.type not in EMBEDDED_TYPES:
                raise OptionError(
                    f"index {spec.type}: the embedded store builds {', '.join(EMBEDDED_TYPES)}; "
                    "HNSW is built by a Milvus server (--db http://HOST:19530)"
                )
            self._migrate_vectors_into_catalog()
            self._set_meta("index", spec.to_json())
            return spec.reopened(asked, self.location) if has_items else spec
        return IndexSpec.from_json(recorded).reopened(asked, self.location)

    def _migrate_vectors_into_catalog(self) -> None:
        """Indexes written before the catalogue held vectors kept them only in the FAISS file: copy them in."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        if "vector" not in columns:
            self._db.execute("ALTER TABLE items ADD COLUMN vector BLOB")
        old = self.folder / VECTORS_FILE
        if not old.exists() or self._db.execute("SELECT 1 FROM items WHERE vector IS NULL LIMIT 1").fetchone() is None:
            return
        index = faiss.read_index(str(old))
        ids = faiss.vector_to_array(index.id_map)
        vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "UPDATE items SET vector = ? WHERE id = ?",
            [(vector.tobytes(), int(i)) for i, vector in zip(ids, vectors, strict=True)],
        )
        self._set_meta("dimension", index.d)
        self._db.execute("COMMIT")
        old.unlink()

    def __len__(self) -> int:
        if self._vectors is not None:
            return self._vectors.ntotal
        return self._db.execute("SELECT count(*) FROM items").fetchone()[0]

    def keys(self) -> list[str]:
        """Every indexed key, in the order they were first indexed."""
        return [key for (key,) in self._db.execute("SELECT key FROM items ORDER BY id")]

    def _ids(self, keys: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, id FROM items WHERE key IN ({marks})", list(chunk)))
        return found

    def _keys_of(self, ids: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT id, key FROM items WHERE id IN ({marks})", list(chunk)))
        return found

    def contains(self, keys: Sequence[str]) -> set[str]:
        return set(self._ids(keys))

    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        rows: dict[str, bytes] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            rows.update(self._db.execute(f"SELECT key, vector FROM items WHERE key IN ({marks})", list(chunk)))
        return np.stack([np.frombuffer(rows[key], np.float32) for key in keys]) if keys else np.zeros((0, 0))

    # -- writes --------------------------------------------------------------------------------------

    def upsert(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        if not len(keys):
            return
        vectors = _unit(embeddings)
        self.check_dimension(self._dimension, vectors.shape[1], "these are")
        unique = dict(zip(keys, vectors, strict=True))  # the last embedding of a key given twice wins
        keys, vectors = list(unique), np.stack(list(unique.values()))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            known = self._ids(keys)
            next_id = (self._db.execute("SELECT max(id) FROM items").fetchone()[0] or 0) + 1
            fresh = [key for key in keys if key not in known]
            ids = {**known, **{key: next_id + offset for offset, key in enumerate(fresh)}}
            rows = [(ids[key], key, vector.tobytes()) for key, vector in zip(keys, vectors, strict=True)]
            self._db.executemany("INSERT OR REPLACE INTO items (id, key, vector) VALUES (?, ?, ?)", rows)
            if self._dimension is None:
                self._dimension = vectors.shape[1]
                self._set_meta("dimension", self._dimension)
            self._bump_changes()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if self._vectors is None:
            self._vectors = self._new_index()
        if known:
            self._vectors.remove_ids(np.fromiter(known.values(), np.int64))
        self._vectors.add_with_ids(vectors, np.array([ids[key] for key in keys], np.int64))
        self._dirty = True
        if self._due_for_training(self._vectors.ntotal):
            self._vectors = self._rebuild(train=True)

    def delete(self, keys: Sequence[str]) -> None:
        known = self._ids(keys)
        if not known:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in known.values()])
        self._bump_changes()
        self._db.execute("COMMIT")
        self._vectors.remove_ids(np.fromiter(known.values(), np.int64))
        self._dirty = True

    def _bump_changes(self) -> None:
        self._set_meta("changes", int(self._meta("changes") or 0) + 1)

    # -- the FAISS index -----------------------------------------------------------------------------

    def _due_for_training(self, count: int) -> bool:
        """IVF: trained at `TRAIN_PER_LIST` x ``nlist`` vectors, again whenever the store grew `RETRAIN_GROWTH`-fold."""
        if self.index_spec.exact or count < TRAIN_PER_LIST * self.index_spec.build["nlist"]:
            return False
        trained = int(self._meta("trained_count") or 0)
        return trained == 0 or count >= RETRAIN_GROWTH * trained

    def _new_index(self, train_on: np.ndarray | None = None) -> faiss.Index:
        """An exact index, or with ``train_on`` the spec's IVF index trained on those vectors."""
        if train_on is None:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self._dimension))
        codes = "Flat" if self.index_spec.type == "IVF_FLAT" else "SQ8"
        index = faiss.index_factory(
            self._dimension, f"IVF{self.index_spec.build['nlist']},{codes}", faiss.METRIC_INNER_PRODUCT
        )
        index.train(train_on)
        return index

    def _rebuild(self, train: bool = False) -> faiss.Index | None:
        """The index from the record: exact while small or FLAT, else IVF, trained anew when ``train``."""
        count = len(self)
        if self._dimension is None or count == 0:
            return None
        trained = self._meta("trained_count")
        if not (train or trained) or self.index_spec.exact:
            index = self._new_index()
        else:
            index = self._new_index(self._sample(TRAIN_SAMPLE_PER_LIST * self.index_spec.build["nlist"]))
            if train:
                self._set_meta("trained_count", count)
        for ids, vectors in self._batches():
            index.add_with_ids(vectors, ids)
        return index

    def _sample(self, size: int) -> np.ndarray:
        """About ``size`` vectors of the record, picked at random by id (ids run from 1, with gaps for deletions)."""
        last = self._db.execute("SELECT max(id) FROM items").fetchone()[0]
        ids = np.random.default_rng(last).choice(last, min(size, last), replace=False) + 1
        rows = [
            row
            for chunk in _chunks(ids.tolist())
            for row in self._db.execute(f"SELECT vector FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        ]
        return np.frombuffer(b"".join(row[0] for row in rows), np.float32).reshape(len(rows), -1)

    def _batches(self, size: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (ids, vectors) of the record, ``size`` rows at a time, in id order."""
        cursor = self._db.execute("SELECT id, vector FROM items ORDER BY id")
        while rows := cursor.fetchmany(size):
            ids = np.array([row[0] for row in rows], np.int64)
            yield ids, np.frombuffer(b"".join(row[1] for row in rows), np.float32).reshape(len(rows), -1)

    def _load_or_rebuild(self) -> faiss.Index | None:
        saved = self.folder / VECTORS_FILE
        if saved.exists() and self._meta("saved_changes") == (self._meta("changes") or "0"):
            return faiss.read_index(str(saved))
        return self._rebuild()

    def flush(self) -> None:
        """Save the FAISS index beside the record, so that the next opening reads it instead of rebuilding."""
        if self._vectors is None:
            return
        partial = self.folder / f"{VECTORS_FILE}.partial"
        faiss.write_index(self._vectors, str(partial))
        os.replace(partial, self.folder / VECTORS_FILE)
        self._set_meta("saved_changes", self._meta("changes") or "0")
        self._dirty = False

    # -- reads ---------------------------------------------------------------------------------------

    def _tuned(self) -> faiss.Index:
        if not isinstance(self._vectors, faiss.IndexIDMap2) and "nprobe" in self.index_spec.search:
            faiss.extract_index_ivf(self._vectors).nprobe = self.index_spec.search["nprobe"]
        return self._vectors

    def search_many(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        queries = _unit(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
        if self._vectors is None or self._vectors.ntotal == 0:
            return [[] for _ in queries]
        self.check_dimension(self._dimension, queries.shape[1], "the query is")
        scores, ids = self._tuned().search(queries, min(k, self._vectors.ntotal))
        keys = self._keys_of(np.unique(ids[ids >= 0]))
        return [
            [(keys[int(i)], float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def similar_pairs(self, threshold: float, progress: bool = False) -> Iterator[tuple[str, str]]:
        if self._vectors is None:
            return
        index = self._tuned()
        batches = tqdm(self._batches(1024), total=-(-len(self) // 1024), desc="comparing", disable=not progress)
        for ids, vectors in batches:
            limits, _, hits = index.range_search(vectors, float(threshold))
            queries = np.repeat(ids, np.diff(limits).astype(np.int64))
            keep = queries != hits
            keys = self._keys_of(np.unique(np.concatenate([ids, hits[keep]])))
            for query, hit in zip(queries[keep], hits[keep], strict=True):
                yield keys[int(query)], keys[int(hit)]

    def close(self) -> None:
        if self._db is not None:
            if self._dirty:
                self.flush()
            self._db.close()
            self._db = None
