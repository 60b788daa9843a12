"""Bulk embedding on Ray Data: the command line's ``embed --engine ray``, on one machine or a cluster.

    files (a local folder, s3://, gs://) -> read_binary_files (Ray read tasks, parallel)
        -> map_batches(`EmbedBatch` actors, one `ImageEncoder` each) -> (filename, embedding | error)

Each actor builds one `ImageEncoder` from the `EncoderOptions` and embeds the bytes of a batch of
files as `ImageItem`s: they go through the same `decode_bytes` (EXIF orientation, then
``rotation``, pixel limit), preprocessing and model as when the local engine reads the same paths,
so the embeddings are equal. A file that fails comes back as its error message in its own row;
nothing is raised for it. Results are yielded in the order of the names given, whatever order
the actors finish in, so that both engines write the same output file.

Ray is an optional extra (``pip install .[ray]``), imported only when this engine runs.
``ray.init()`` joins the cluster that ``RAY_ADDRESS`` names, else starts one on this machine (and
stops it at the end). On a cluster, the workers need this package, the model and the data: give
DATA as object storage (``s3://``, ``gs://``, read by pyarrow's file systems as Ray reads them)
or a folder mounted on every node, and the model as a hub name or a folder on every node.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import EncodeResult, ImageEncoder, ImageItem
from clip_image_encoder.errors import EmbeddingError, MissingExtraError, ModelNotFoundError, OptionError
from clip_image_encoder.extras import require
from clip_image_encoder.images.listing import is_hidden
from clip_image_encoder.models.devices import wants_cuda

pa = require("pyarrow", "ray", "the ray engine")  # the ray extra brings it
pafs = require("pyarrow.fs", "ray", "the ray engine")

if TYPE_CHECKING:
    from types import ModuleType


def is_object_storage(data: str) -> bool:
    """Whether DATA is a uri that Ray reads (``s3://``, ``gs://``...) rather than a local folder."""
    scheme = urllib.parse.urlsplit(data).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter is a Windows drive


def list_object_storage(data: str) -> list[str]:
    """Every file under the uri, as names relative to it, sorted, hidden files and folders skipped.

    The same rule as the local `list_images` (`is_hidden`); ``--resume`` needs the names before anything is read.
    """
    filesystem, root = pafs.FileSystem.from_uri(data)
    root = root.rstrip("/")
    names = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        name = info.path[len(root) + 1 :]
        if info.type == pafs.FileType.File and not is_hidden(name.split("/")):
            names.append(name)
    return sorted(names, key=lambda name: name.split("/"))  # as paths sort: cats/x before cats-y


CALL_ERRORS = (OptionError, ModelNotFoundError, MissingExtraError)
"""Errors of the whole call (a model that cannot load, an option it refuses), not of one file: an actor
returns them in its ``call_error`` column and the driver raises them again, so that the command line
reports them as it does for the local engine (Ray would otherwise hide them in its own traceback)."""


class EmbedBatch:
    """The Ray Data actor: builds the encoder once, then embeds batches of ``{"bytes", "path"}`` rows.

    Returns a ``pyarrow.Table`` of ``path``, ``embedding`` (a list of the output dtype; null for an
    error), ``error`` (the file's message; null for an embedding) and ``call_error`` (see `CALL_ERRORS`).
    """

    def __init__(self, options: EncoderOptions) -> None:
        self.options = options
        self.encoder: ImageEncoder | None = None
        self.failure: Exception | None = None
        try:
            self.encoder = ImageEncoder.from_options(options)  # reads no path: it is given bytes
        except CALL_ERRORS as exc:
            self.failure = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        items = (ImageItem(bytes(data), rotation=self.options.rotation) for data in batch["bytes"])
        results: list[EncodeResult] = []
        failure = self.failure
        if self.encoder is not None:
            try:
                results = list(self.encoder.encode(items, self.options))
            except CALL_ERRORS as exc:
                failure = exc
        if failure is not None:
            results = [EmbeddingError(str(failure))] * len(batch["path"])
        return pa.table(
            {
                "path": pa.array(batch["path"], pa.string()),
                "embedding": _embedding_column(results),
                "error": pa.array([str(r) if isinstance(r, EmbeddingError) else None for r in results], pa.string()),
                "call_error": pa.array([_describe(failure)] * len(results), pa.string()),
            }
        )


def _describe(failure: Exception | None) -> str | None:
    return None if failure is None else f"{type(failure).__name__}: {failure}"


def _raise_call_error(description: str) -> NoReturn:
    kind, _, message = description.partition(": ")
    raise next(error for error in CALL_ERRORS if error.__name__ == kind)(message)


def _embedding_column(results: list[EncodeResult]) -> pa.ListArray:
    """The embeddings as one list column, dtype kept (float32, float16 or int8), null where a row failed."""
    vectors = [result for result in results if isinstance(result, np.ndarray)]
    lengths = [len(result) if isinstance(result, np.ndarray) else 0 for result in results]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.concatenate(vectors) if vectors else np.zeros(0, np.float32))
    failed = pa.array([not isinstance(result, np.ndarray) for result in results])
    return pa.ListArray.from_arrays(offsets, values, mask=failed)


def embed_on_ray(
    data: str,
    names: Sequence[str],
    options: EncoderOptions,
    actors: int = 1,
    cpus_per_actor: float = 1,
    progress_bars: bool = True,
) -> Iterator[tuple[str, EncodeResult]]:
    """Yield ``(name, embedding | error)`` for each file ``data/name``, in the order of ``names``.

    ``actors``: encoders running at once (each loads the model; one GPU each when the device is
    cuda). ``cpus_per_actor``: CPUs Ray reserves for each, also its torch threads unless
    ``num_threads`` is set; leave Ray a CPU to read files with.
    """
    if actors < 1 or cpus_per_actor <= 0:
        raise OptionError(f"the ray engine needs at least 1 actor and some CPUs each, got {actors} x {cpus_per_actor}")
    if not names:
        return
    ray = _import_ray()
    if not is_object_storage(data):
        data = str(Path(data).resolve())
    filesystem, root = pafs.FileSystem.from_uri(data)
    paths = [f"{root.rstrip('/')}/{name}" for name in names]
    started_here = not ray.is_initialized()
    if started_here:
        ray.init()  # RAY_ADDRESS, when set, names the cluster to join
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress_bars
        dataset = ray.data.read_binary_files(paths, include_paths=True, filesystem=filesystem).map_batches(
            EmbedBatch,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_args=(_actor_options(options, cpus_per_actor),),
            **_actor_resources(options.device, cpus_per_actor),
        )
        yield from _in_order(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), paths, names)
    finally:
        if started_here:
            ray.shutdown()


def _import_ray() -> ModuleType:
    require("ray.data", "ray", "the ray engine")
    return require("ray", "ray", "the ray engine")


def _actor_resources(device: str, cpus_per_actor: float) -> dict[str, Any]:
    """What Ray reserves for each actor: its CPUs, and one GPU when the device is (or finds) cuda."""
    return {"num_cpus": cpus_per_actor, **({"num_gpus": 1} if wants_cuda(device) else {})}


def _actor_options(options: EncoderOptions, cpus_per_actor: float) -> EncoderOptions:
    """The options as one actor runs them: its torch threads fit its CPUs; ``cuda:N`` is Ray's GPU, cuda."""
    changes: dict[str, Any] = {}
    if options.num_threads == 0:
        changes["num_threads"] = max(1, int(cpus_per_actor))
    if options.device.startswith("cuda"):
        changes["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the one GPU it gives the actor
    return dataclasses.replace(options, **changes)


def _in_order(
    batches: Iterator[pa.Table], paths: list[str], names: Sequence[str]
) -> Iterator[tuple[str, EncodeResult]]:
    """Rows as they arrive, put back in the order of ``paths``; holds only those that came early."""
    position = {path: index for index, path in enumerate(paths)}
    early: dict[int, EncodeResult] = {}
    following = 0
    for batch in batches:
        if batch.column("call_error").null_count < len(batch):
            _raise_call_error(batch.column("call_error").drop_null()[0].as_py())
        embeddings, errors = batch.column("embedding"), batch.column("error")
        for row, path in enumerate(batch.column("path").to_pylist()):
            error = errors[row].as_py()
            early[position[path]] = EmbeddingError(error) if error is not None else _vector(embeddings[row])
        while following in early:
            yield names[following], early.pop(following)
            following += 1
    if following < len(paths):
        raise RuntimeError(f"Ray returned no row for {paths[following]!r}")


def _vector(cell: pa.ListScalar) -> np.ndarray:
    return np.array(cell.values.to_numpy(zero_copy_only=False))
