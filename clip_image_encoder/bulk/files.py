"""Embedding files: one writer and one reader per format, so that ``--resume`` can read what it wrote.

Formats, as LightlyTrain's users know them, plus two for the Python data stack:

- ``csv``: header ``filename,embedding_0,...``; one row per image.
- ``lightly_csv``: header ``filenames,embedding_0,...,labels``; labels are 0.
- ``torch``: ``{"embeddings": Tensor (N, D), "filenames": list[str]}``, loadable with
  ``torch.load(path, weights_only=True)``.
- ``npy``: the ``(N, D)`` float32 array in ``FILE``, filenames in ``FILE`` with suffix
  ``.filenames.json`` beside it.
- ``parquet``: columns ``filename`` (string) and ``embedding`` (fixed-size list of float32).

Writes are atomic (a temporary file renamed over the target), so an interrupted run never
leaves a half-written output behind.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clip_image_encoder.errors import OptionError
from clip_image_encoder.extras import require


@dataclass
class EmbeddingTable:
    filenames: list[str] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    """``(N, D)`` float32, row i belongs to ``filenames[i]``."""


def write_embeddings(path: Path, table: EmbeddingTable, fmt: str) -> None:
    _check_format(fmt)
    temporary = path.with_name(path.name + ".partial")
    _WRITERS[fmt](temporary, table)
    if fmt == "npy":
        os.replace(_filenames_sidecar(temporary), _filenames_sidecar(path))
    os.replace(temporary, path)


def read_embeddings(path: Path, fmt: str) -> EmbeddingTable:
    _check_format(fmt)
    return _READERS[fmt](path)


def _check_format(fmt: str) -> None:
    if fmt not in _WRITERS:
        raise OptionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _float_text(row: np.ndarray) -> list[str]:
    return [format(float(value), ".9g") for value in row]  # 9 digits round-trip float32 exactly


def _write_csv(path: Path, table: EmbeddingTable, lightly: bool = False) -> None:
    dim = table.embeddings.shape[1] if len(table.filenames) else 0
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [f"embedding_{i}" for i in range(dim)]
        writer.writerow(["filenames", *columns, "labels"] if lightly else ["filename", *columns])
        for name, row in zip(table.filenames, table.embeddings, strict=True):
            writer.writerow([name, *_float_text(row), 0] if lightly else [name, *_float_text(row)])


def _read_csv(path: Path, lightly: bool = False) -> EmbeddingTable:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    if lightly:
        rows = [row[:-1] for row in rows]
    if not rows:
        return EmbeddingTable()
    return EmbeddingTable([row[0] for row in rows], np.array([row[1:] for row in rows], dtype=np.float32))


def _write_torch(path: Path, table: EmbeddingTable) -> None:
    import torch  # each format imports its library when it is used: the command line starts without them

    torch.save({"embeddings": torch.from_numpy(table.embeddings), "filenames": list(table.filenames)}, path)


def _read_torch(path: Path) -> EmbeddingTable:
    import torch

    content = torch.load(path, weights_only=True)
    return EmbeddingTable(list(content["filenames"]), content["embeddings"].numpy())


def _filenames_sidecar(path: Path) -> Path:
    """``emb.npy`` -> ``emb.filenames.json``; a ``.partial`` file gets a ``.partial`` sidecar."""
    partial = path.name.endswith(".partial")
    stem = path.name.removesuffix(".partial").removesuffix(".npy")
    return path.with_name(stem + ".filenames.json" + (".partial" if partial else ""))


def _write_npy(path: Path, table: EmbeddingTable) -> None:
    with path.open("wb") as handle:
        np.save(handle, table.embeddings)
    _filenames_sidecar(path).write_text(json.dumps(table.filenames))


def _read_npy(path: Path) -> EmbeddingTable:
    filenames = json.loads(_filenames_sidecar(path).read_text())
    return EmbeddingTable(filenames, np.load(path, allow_pickle=False))


def _write_parquet(path: Path, table: EmbeddingTable) -> None:
    pa = require("pyarrow", "parquet", "--format parquet")
    pq = require("pyarrow.parquet", "parquet", "--format parquet")
    dim = table.embeddings.shape[1] if len(table.filenames) else 0
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(table.embeddings.reshape(-1), pa.float32()), dim)
    pq.write_table(pa.table({"filename": table.filenames, "embedding": vectors}), path)


def _read_parquet(path: Path) -> EmbeddingTable:
    pq = require("pyarrow.parquet", "parquet", "--format parquet")
    content = pq.read_table(path)
    if content.num_rows == 0:
        return EmbeddingTable()
    vectors = content.column("embedding").combine_chunks()
    embeddings = vectors.flatten().to_numpy().reshape(content.num_rows, -1).astype(np.float32)
    return EmbeddingTable(content.column("filename").to_pylist(), embeddings)


_WRITERS: dict[str, Callable[[Path, EmbeddingTable], None]] = {
    "csv": _write_csv,
    "lightly_csv": lambda path, table: _write_csv(path, table, lightly=True),
    "torch": _write_torch,
    "npy": _write_npy,
    "parquet": _write_parquet,
}
_READERS: dict[str, Callable[[Path], EmbeddingTable]] = {
    "csv": _read_csv,
    "lightly_csv": lambda path: _read_csv(path, lightly=True),
    "torch": _read_torch,
    "npy": _read_npy,
    "parquet": _read_parquet,
}
FORMATS = tuple(_WRITERS)
