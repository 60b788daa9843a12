"""The encoding pipeline shared by the Executor and the command line.

Sources go in lazily; each comes out as an embedding or as the `ImageInputError` that says
why it could not be embedded. A batch is decoded and resized in a thread pool, then embedded;
at most ``prefetch_batches + 1`` batches are held at any time, so memory grows with the batch
size, not with the input.

When the model runs on a GPU, decoding of the next batches overlaps the model's work on this
one. On the cpu the model already uses every core, and overlapping would only make decode
threads and torch threads fight over them (measured: slower than not overlapping), so there a
batch is decoded on all cores, then embedded on all cores; callers that run several encodes at
once on the cpu should take them in turn (the Executor does, per request).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from clip_image_encoder.decoding import DecodeLimits, ImageInputError, ImageSource, load_image
from clip_image_encoder.model import EmbeddingModel
from clip_image_encoder.postprocessing import OutputOptions, apply_output_options
from clip_image_encoder.preprocessing import (
    check_model_input,
    is_model_input,
    resize_and_crop,
    select_view,
    to_model_input,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """A source with the part of it to embed."""

    source: ImageSource | None
    roi: tuple[int, int, int, int] | None = None
    """(x, y, width, height) in pixels of the decoded, EXIF-oriented image; None for all of it."""
    rotation: int = 0
    """Degrees counter-clockwise, applied after the roi: 0, 90, 180 or 270."""


EncodeResult = np.ndarray | ImageInputError
"""A ``(D,)`` float32 embedding, or the error of that one input."""

PREPROCESSING_MODES = ("exact", "fast")


class ImageEncoder:
    """Embeds image sources in batches; on cuda, decoding of the next batches overlaps the model on this one."""

    def __init__(
        self,
        model: EmbeddingModel | Callable[[], EmbeddingModel],
        limits: DecodeLimits | None = None,
        num_workers: int = 2,
        prefetch_batches: int | None = None,
    ) -> None:
        """Take a loaded model, or a function that loads one (run on the model thread); warm it up there.

        ``prefetch_batches``: batches decoded ahead of the model; default 2 on cuda, 0 on cpu.
        """
        # Every torch op runs on this one thread, loading (int8 quantisation computes) and warm-up
        # included. libgomp gives each thread that starts parallel work a team of its own, and once
        # teams hold more threads than there are cores it stops spinning between parallel regions:
        # one idle extra team (a warm-up on the caller's thread) made batch-1 forwards 20-35 ms slower
        # (benchmarks/MODEL_SPEEDUPS.md: 6.9 against 8.1 images/s).
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        try:
            self.model: EmbeddingModel = self._model_thread.submit(model).result() if callable(model) else model
            self._model_thread.submit(self.model.warm_up).result()
        except BaseException:
            self._model_thread.shutdown()
            raise
        self.limits = limits or DecodeLimits()
        if prefetch_batches is None:
            prefetch_batches = 2 if self.model.device.type == "cuda" else 0
        self.prefetch_batches = prefetch_batches
        self.overlaps = prefetch_batches > 0
        """Whether decoding runs beside the model, so that concurrent requests gain from overlapping."""
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode")

    def encode(
        self,
        sources: Iterable[ImageSource | ImageItem | None],
        batch_size: int = 32,
        output: OutputOptions | None = None,
        preprocessing: str = "exact",
    ) -> Iterator[EncodeResult]:
        """Yield one result per source, in order."""
        output = output or OutputOptions()
        if output.embed_dim is not None and output.embed_dim > self.model.embedding_dim:
            raise ValueError(
                f"embed_dim={output.embed_dim} is larger than the model's {self.model.embedding_dim} dimensions"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"preprocessing must be one of {PREPROCESSING_MODES}, got {preprocessing!r}")
        fast = preprocessing == "fast"
        pending: deque[list[Future]] = deque()
        for batch in _batched(sources, batch_size):
            pending.append([self._pool.submit(self.prepare, source, fast) for source in batch])
            if len(pending) > self.prefetch_batches:
                yield from self._embed_batch(pending.popleft(), output)
        while pending:
            yield from self._embed_batch(pending.popleft(), output)

    def prepare(self, item: ImageSource | ImageItem | None, fast: bool = False) -> np.ndarray:
        """Decode and resize one source: ``(H, W, 3)`` uint8 pixels, or a checked ``(3, H, W)`` float32 model input."""
        if not isinstance(item, ImageItem):
            item = ImageItem(item)
        config = self.model.preprocess
        if isinstance(item.source, np.ndarray) and is_model_input(item.source):
            if item.roi is not None or item.rotation:
                raise ImageInputError("roi and rotation cannot apply to a preprocessed model input")
            return check_model_input(item.source, config)
        # JPEG draft decoding shrinks the image, so it is off when a roi gives full-size coordinates.
        draft_size = config.draft_size if fast and item.roi is None else None
        try:
            image = load_image(item.source, self.limits, draft_size=draft_size)
            return resize_and_crop(select_view(image, item.roi, item.rotation), config, fast=fast)
        except ImageInputError:
            raise
        except Exception as exc:  # a bug or an exotic file must still only fail its own input
            logger.exception("unexpected failure preparing an image")
            raise ImageInputError(f"image could not be preprocessed ({type(exc).__name__}: {exc})") from exc

    def _embed_batch(self, futures: list[Future], output: OutputOptions) -> Iterator[EncodeResult]:
        results: list[EncodeResult] = []
        for future in futures:
            try:
                results.append(future.result())
            except ImageInputError as exc:
                results.append(exc)
        ready = [i for i, result in enumerate(results) if isinstance(result, np.ndarray)]
        if ready:
            try:
                batch = [results[i] for i in ready]
                embeddings = self._model_thread.submit(lambda: self.model.embed(self._assemble(batch))).result()
                embeddings = apply_output_options(embeddings, output)
                for row, index in enumerate(ready):
                    results[index] = embeddings[row]
            except Exception as exc:  # the model failing one batch must not end the service
                logger.exception("model failed on a batch of %d", len(ready))
                error = ImageInputError(f"model failed on this batch ({type(exc).__name__}: {exc})")
                for index in ready:
                    results[index] = error
        yield from results

    def _assemble(self, prepared: list[np.ndarray]) -> torch.Tensor:
        """Stack pixels (normalised here, once per batch) and ready model inputs in their order."""
        pixel_rows = [i for i, item in enumerate(prepared) if item.dtype == np.uint8]
        if len(pixel_rows) == len(prepared):
            return to_model_input(prepared, self.model.preprocess)
        batch = torch.empty(len(prepared), 3, *self.model.preprocess.output_size)
        if pixel_rows:
            batch[pixel_rows] = to_model_input([prepared[i] for i in pixel_rows], self.model.preprocess)
        for i, item in enumerate(prepared):
            if item.dtype != np.uint8:
                batch[i] = torch.from_numpy(item)
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._model_thread.shutdown(wait=True, cancel_futures=True)


def _batched(items: Iterable[ImageSource | ImageItem | None], size: int) -> Iterator[list]:
    """Lazy fixed-size chunks (``itertools.batched`` needs Python 3.12)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
