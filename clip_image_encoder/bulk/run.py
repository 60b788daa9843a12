"""Embed a folder into a file or a store: list, skip what the output holds, embed on an engine, write, report.

    names under DATA -> engine (local: this process; ray: Ray Data actors) -> (name, embedding | error)
        -> embed: the embedding file (rewritten every `CHECKPOINT_EVERY` new embeddings) + the errors report
        -> index: the vector store (`STORE_WRITE_ROWS` at a time, each durable before the next is read)

Both engines feed these writers, so they write the same file and the same store. The engines import what they run (the
encoder, Ray) when they run: the command line starts without torch.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clip_image_encoder.bulk.files import EmbeddingTable, read_embeddings, write_embeddings
from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.errors import EmbeddingError, OptionError
from clip_image_encoder.images.listing import list_images
from clip_image_encoder.search.stores import VectorStore

CHECKPOINT_EVERY = 5000
"""The output is rewritten every this many new embeddings, so ``--resume`` loses little."""
STORE_WRITE_ROWS = 1024
"""Embeddings written to a store at once: an interrupted ``index --resume`` re-embeds fewer than this."""


@dataclass(frozen=True)
class BulkRun:
    """One ``embed`` or ``index`` run: what to read, where to write, and how."""

    data: str
    """A local folder, or with the ray engine also object storage (``s3://``, ``gs://``)."""
    options: EncoderOptions
    out: Path | None = None
    """``embed``'s output file."""
    fmt: str = "csv"
    engine: str = "local"
    overwrite: bool = False
    resume: bool = False
    ray_actors: int = 1
    ray_cpus_per_actor: float = 1
    progress: bool = True


@dataclass(frozen=True)
class BulkReport:
    embedded: int
    kept: int
    """Embeddings already in the output (``--resume``)."""
    errors: list[tuple[str, str]]
    """``(name, why)`` of each file that got no embedding."""
    errors_file: Path | None
    seconds: float


Results = Iterator[tuple[str, np.ndarray | EmbeddingError]]
"""``(name relative to DATA, embedding | error)``, in the order of the names."""


def embed_folder(run: BulkRun) -> BulkReport:
    """Embed every file under ``run.data`` that the output does not hold yet into ``run.out``."""
    assert run.out is not None, "embed_folder writes run.out"
    if run.out.exists() and not (run.overwrite or run.resume):
        raise OptionError(f"{run.out} exists: pass --overwrite to replace it or --resume to add the missing files")
    listing = _checked_listing(run)
    table = read_embeddings(run.out, run.fmt) if run.resume and run.out.exists() else EmbeddingTable()
    done = set(table.filenames)
    names, vectors = list(table.filenames), list(table.embeddings)
    todo = [name for name in listing if name not in done]
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    for name, vector in _embedded(run, todo, errors):
        names.append(name)
        vectors.append(vector)
        if len(names) % CHECKPOINT_EVERY == 0:
            write_embeddings(run.out, _table(names, vectors), run.fmt)
    write_embeddings(run.out, _table(names, vectors), run.fmt)
    seconds = time.perf_counter() - started
    return BulkReport(len(todo) - len(errors), len(done), errors, _write_errors(run.out, errors), seconds)


def index_folder(run: BulkRun, store: VectorStore) -> BulkReport:
    """Embed every file under ``run.data`` into ``store``, keyed by `store_key`; with ``resume``, only those
    the store does not hold yet (else every file, replacing what the store holds)."""
    names = _checked_listing(run)
    keys = {name: store_key(run.data, name) for name in names}
    held = store.contains(list(keys.values())) if run.resume else set()
    todo = [name for name in names if keys[name] not in held]
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    batch: list[tuple[str, np.ndarray]] = []
    for name, vector in _embedded(run, todo, errors):
        batch.append((keys[name], vector))
        if len(batch) == STORE_WRITE_ROWS:
            store.upsert([key for key, _ in batch], np.stack([vector for _, vector in batch]))
            batch = []
    if batch:
        store.upsert([key for key, _ in batch], np.stack([vector for _, vector in batch]))
    return BulkReport(len(todo) - len(errors), len(held), errors, None, time.perf_counter() - started)


def store_key(data: str, name: str) -> str:
    """The key of a file in a store: its absolute path, or the object storage uri of it."""
    if _is_object_storage(data):
        return f"{data.rstrip('/')}/{name}"
    return str(Path(data).resolve() / name)


def _checked_listing(run: BulkRun) -> list[str]:
    on_object_storage = run.engine == "ray" and _is_object_storage(run.data)
    if not on_object_storage and not Path(run.data).is_dir():
        raise OptionError(f"{run.data} is not a folder")
    return _listing(run, on_object_storage)


def _embedded(run: BulkRun, todo: list[str], errors: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, embedding)`` of each of ``todo`` on the run's engine; ``(name, why)`` of a failure into ``errors``."""
    with (
        closing(ENGINES[run.engine](run, todo)) as results,
        tqdm(total=len(todo), unit="img", desc="embedding", disable=not run.progress) as progress,
    ):
        for name, result in results:
            if isinstance(result, EmbeddingError):
                errors.append((name, str(result)))
            else:
                yield name, result
            progress.update()


def _listing(run: BulkRun, on_object_storage: bool) -> list[str]:
    if on_object_storage:
        from clip_image_encoder.bulk.ray import list_object_storage

        return list_object_storage(run.data)
    folder = Path(run.data)
    return [path.relative_to(folder).as_posix() for path in list_images(folder)]


def _is_object_storage(data: str) -> bool:
    from clip_image_encoder.bulk.ray import is_object_storage

    return is_object_storage(data)


def _write_errors(out: Path, errors: list[tuple[str, str]]) -> Path | None:
    if not errors:
        return None
    report = out.with_name(out.name + ".errors.csv")
    with report.open("w", newline="") as handle:
        csv.writer(handle).writerows([("filename", "error"), *errors])
    return report


def _embed_locally(run: BulkRun, names: list[str]) -> Results:
    """The local engine: this process, the pipeline's decode threads and model thread."""
    from clip_image_encoder.encoding.images import ImageEncoder, encode_paths

    paths = [Path(run.data) / name for name in names]
    with ImageEncoder.from_options(run.options, any_local_file=True) as encoder:
        yield from zip(names, encode_paths(encoder, paths, run.options), strict=True)


def _embed_on_ray(run: BulkRun, names: list[str]) -> Results:
    """The ray engine: the same pipeline in Ray Data actors, here or on the cluster RAY_ADDRESS names."""
    from clip_image_encoder.bulk.ray import embed_on_ray

    return embed_on_ray(
        run.data, names, run.options, run.ray_actors, run.ray_cpus_per_actor, progress_bars=run.progress
    )


ENGINES: dict[str, Callable[[BulkRun, list[str]], Results]] = {"local": _embed_locally, "ray": _embed_on_ray}
"""``embed --engine``: each yields ``(name relative to DATA, embedding | error)`` in the order of the names."""


def _table(names: list[str], vectors: list[np.ndarray]) -> EmbeddingTable:
    return EmbeddingTable(
        list(names), np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
    )
