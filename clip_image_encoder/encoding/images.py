"""The encoding pipeline shared by the Executor and the command line: sources in, embeddings out.

    source -> decode (sources, decoding) -> per-image preprocessing  [decode threads]
           -> per-batch preprocessing -> model -> output options     [the model thread]

Sources go in lazily; each comes out as an embedding or as the `EmbeddingError` that says why
it has none. At most ``prefetch_batches + 1`` batches are held at any time, so memory grows with
the batch size, not with the input.

When the model runs on a GPU, decoding of the next batches overlaps the model's work on this
one. On the cpu the model already uses every core, and overlapping would only make decode
threads and torch threads fight over them, so there a batch is decoded on all cores, then
embedded on all cores; callers that run several encodes at once on the cpu should take them in
turn (the Executor does, per request).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.batching import batched
from clip_image_encoder.encoding.metrics import PipelineMetrics
from clip_image_encoder.encoding.outputs import OutputOptions, apply_output_options
from clip_image_encoder.errors import EmbeddingError, ImageInputError, ModelError, OptionError
from clip_image_encoder.images.preprocessing import Preprocessor, is_model_input
from clip_image_encoder.images.uris import DecodeLimits, ImageSource, load_image
from clip_image_encoder.models.devices import configure_cpu_threads
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.models.network import EmbeddingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """A source with the part of it to embed."""

    source: ImageSource | None
    roi: tuple[int, int, int, int] | None = None
    """(x, y, width, height) in pixels of the decoded, EXIF-oriented image; None for all of it."""
    rotation: int = 0
    """Degrees counter-clockwise, applied after the roi: 0, 90, 180 or 270."""


EncodeResult = np.ndarray | EmbeddingError
"""A ``(D,)`` embedding, or the error of that one input."""


class ImageEncoder:
    """Embeds image sources in batches; on cuda, decoding of the next batches overlaps the model on this one."""

    def __init__(
        self,
        model: EmbeddingModel | Callable[[], EmbeddingModel],
        limits: DecodeLimits | None = None,
        num_workers: int = 2,
        prefetch_batches: int | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        """Take a loaded model, or a function that loads one (run on the model thread); warm it up there.

        ``prefetch_batches``: batches decoded ahead of the model; default 2 on cuda, 0 on cpu.
        ``metrics``: where stage timings, batch sizes and outcomes go (default: nowhere).
        """
        # Every torch op runs on this one thread, loading (int8 quantisation computes) and warm-up
        # included: libgomp gives each thread that starts parallel work a team of its own, and one idle
        # extra team slowed batch-1 forwards down (benchmarks/MODEL_SPEEDUPS.md, "OpenMP teams").
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        try:
            self.model: EmbeddingModel = self._model_thread.submit(model).result() if callable(model) else model
            self._model_thread.submit(self.model.warm_up).result()
        except BaseException:
            self._model_thread.shutdown()
            raise
        self.limits = limits or DecodeLimits()
        self.metrics = metrics or PipelineMetrics()
        if prefetch_batches is None:
            prefetch_batches = 2 if self.model.device.type == "cuda" else 0
        self.prefetch_batches = prefetch_batches
        self.overlaps = prefetch_batches > 0
        """Whether decoding runs beside the model, so that concurrent requests gain from overlapping."""
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode")

    @classmethod
    def from_options(
        cls,
        options: EncoderOptions,
        replicas: int = 1,
        any_local_file: bool = False,
    ) -> ImageEncoder:
        """The encoder that the options describe; sets the process's torch threads (shared among replicas).

        ``any_local_file``: read any path it is given (the command line), instead of only under
        ``local_uri_roots`` (a service).
        """
        configure_cpu_threads(options.num_threads, replicas)
        load = functools.partial(
            load_model,
            options.pretrained_model_name_or_path,
            device=options.device,
            dtype=options.dtype,
            backend=options.backend,
        )
        limits = decode_limits(options, any_local_file=any_local_file)
        return cls(load, limits, num_workers=options.num_workers)

    def __enter__(self) -> ImageEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def encode(
        self, sources: Iterable[ImageSource | ImageItem | None], options: EncoderOptions | None = None
    ) -> Iterator[EncodeResult]:
        """Yield one result per source, in order, as the per-request part of ``options`` asks."""
        options = options or EncoderOptions()
        self.check_request(options)
        output = OutputOptions.from_options(options)
        preprocessor = Preprocessor(self.model.preprocess, fast=options.preprocessing == "fast")
        trace = self.metrics.trace_context()  # the caller's span parents the spans of the pool's threads
        pending: deque[list[Future]] = deque()
        for batch in batched(sources, options.batch_size):
            pending.append([self._pool.submit(self.prepare, source, preprocessor, trace) for source in batch])
            if len(pending) > self.prefetch_batches:
                yield from self._embed_batch(pending.popleft(), preprocessor, output, trace)
        while pending:
            yield from self._embed_batch(pending.popleft(), preprocessor, output, trace)

    def check_request(self, options: EncoderOptions) -> None:
        """Refuse per-request options that this model cannot honour (before any of the request's work)."""
        if options.embed_dim > self.model.embedding_dim:
            raise OptionError(
                f"option embed_dim={options.embed_dim} is larger than the model's {self.model.embedding_dim} dimensions"
            )

    def prepare(
        self, item: ImageSource | ImageItem | None, preprocessor: Preprocessor, trace: object = None
    ) -> np.ndarray:
        """Decode and preprocess one source: ``(H, W, 3)`` uint8 pixels, or a checked ``(3, H, W)`` float32 input."""
        if not isinstance(item, ImageItem):
            item = ImageItem(item)
        if isinstance(item.source, np.ndarray) and is_model_input(item.source):
            if item.roi is not None or item.rotation:
                raise ImageInputError("roi and rotation cannot apply to a preprocessed model input")
            return preprocessor.model_input(item.source)
        try:
            with self.metrics.stage("decode", trace):
                image = load_image(item.source, self.limits, draft_size=preprocessor.draft_size(item.roi))
            with self.metrics.stage("preprocess", trace):
                return preprocessor.image(image, item.roi, item.rotation)
        except EmbeddingError:
            raise
        except Exception as exc:  # a bug or an exotic file must still only fail its own input
            logger.exception("unexpected failure preparing an image")
            raise ImageInputError(f"image could not be preprocessed ({type(exc).__name__}: {exc})") from exc

    def _embed_batch(
        self, futures: list[Future], preprocessor: Preprocessor, output: OutputOptions, trace: object
    ) -> Iterator[EncodeResult]:
        results: list[EncodeResult] = []
        for future in futures:
            try:
                results.append(future.result())
            except EmbeddingError as exc:
                results.append(exc)
        ready = [i for i, result in enumerate(results) if isinstance(result, np.ndarray)]
        if ready:
            embedded = self._embed_prepared([results[i] for i in ready], preprocessor, output, trace)
            for index, result in zip(ready, embedded, strict=True):
                results[index] = result
        for result in results:
            self.metrics.outcome(result)
        yield from results

    def _embed_prepared(
        self, prepared: list[np.ndarray], preprocessor: Preprocessor, output: OutputOptions, trace: object
    ) -> list[EncodeResult]:
        """One forward pass over a batch's prepared inputs; if the model fails, each gets that `ModelError`."""

        def normalize_and_forward() -> np.ndarray:
            with self.metrics.stage("normalize", trace):
                batch = preprocessor.batch(prepared)
            with self.metrics.stage("forward", trace):
                return self.model.embed(batch)

        self.metrics.batch(len(prepared))
        try:
            embeddings = self._model_thread.submit(normalize_and_forward).result()
        except Exception as exc:  # the model failing one batch must not end the service
            logger.exception("model failed on a batch of %d", len(prepared))
            return [ModelError(f"model failed on this batch ({type(exc).__name__}: {exc})")] * len(prepared)
        return list(apply_output_options(embeddings, output))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._model_thread.shutdown(wait=True, cancel_futures=True)


def encode_paths(encoder: ImageEncoder, paths: Sequence[Path], options: EncoderOptions) -> Iterator[EncodeResult]:
    """Files of the command line's own folders, each at the ``rotation`` option, through ``encoder``."""
    return encoder.encode((ImageItem(str(path), rotation=options.rotation) for path in paths), options)


def decode_limits(options: EncoderOptions, any_local_file: bool = False) -> DecodeLimits:
    """The limits that the options set; ``any_local_file`` for the command line, which reads what it is given."""
    try:
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in options.allowed_remote_networks)
    except ValueError as exc:
        raise OptionError(f"option allowed_remote_networks: {exc}") from None
    return DecodeLimits(
        max_image_pixels=options.max_image_pixels,
        local_uri_roots=None if any_local_file else tuple(Path(root).resolve() for root in options.local_uri_roots),
        allow_remote_uris=options.allow_remote_uris,
        allowed_remote_networks=networks,
    )
