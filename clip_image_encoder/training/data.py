"""The training images: every file under a folder, decoded and framed as the Executor does, in batches.

Decoding is the Executor's (`images.uris.load_image`: EXIF orientation, transparency, size limits) and so is
the framing (`Preprocessor`: the model's resize of the short side and centre crop), in its fast mode: the
random crops that follow make bit-exactness pointless, and reduced-size JPEG decoding saves most of the
cost on large photos. Every file is decoded once before training; those that fail are skipped and listed.
Only a batch and the one being prepared are in memory at a time, whatever the size of the folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from clip_image_encoder.errors import ImageInputError, TrainingError
from clip_image_encoder.images.listing import list_images
from clip_image_encoder.images.preprocessing import PreprocessConfig, Preprocessor
from clip_image_encoder.images.uris import DecodeLimits, load_image


class ImageFolder:
    """The readable images under a folder; ``skipped`` lists the others as ``(path, why)``."""

    def __init__(
        self,
        folder: Path,
        preprocess: PreprocessConfig,
        pool: ThreadPoolExecutor,
        max_image_pixels: int = DecodeLimits.max_image_pixels,
    ) -> None:
        if not folder.is_dir():
            raise TrainingError(f"{folder} is not a folder")
        self.preprocessor = Preprocessor(preprocess, fast=True)
        self.limits = DecodeLimits(max_image_pixels=max_image_pixels, local_uri_roots=None)
        self.pool = pool
        try:
            candidates = list_images(folder)
        except OSError as exc:
            raise TrainingError(f"{folder} cannot be read ({exc.strerror or exc})") from None
        if not candidates:
            raise TrainingError(f"{folder} holds no files: give the folder of your training images")
        checked = list(pool.map(self._why_unreadable, candidates))
        self.paths = [path for path, why in zip(candidates, checked, strict=True) if why is None]
        self.skipped = [(path, why) for path, why in zip(candidates, checked, strict=True) if why is not None]
        if not self.paths:
            first_path, first_error = self.skipped[0]
            raise TrainingError(
                f"none of the {len(candidates)} files under {folder} is a readable image "
                f"(e.g. {first_path}: {first_error})"
            )

    def load(self, path: Path) -> np.ndarray:
        """One image as the model frames it: ``(H, W, 3)`` uint8 at the model's input size."""
        image = load_image(str(path), self.limits, self.preprocessor.draft_size())
        return self.preprocessor.resize_and_crop(image)

    def _why_unreadable(self, path: Path) -> str | None:
        try:
            self.load(path)
        except ImageInputError as exc:
            return str(exc)
        return None

    def batches(self, order: Sequence[int], batch_size: int) -> Iterator[torch.Tensor]:
        """Full batches in ``order`` (the remainder is dropped: every step sees ``batch_size`` images), each
        ``(N, 3, H, W)`` float32 in [0, 1]; the next batch decodes in the threads while this one trains."""
        chunks = [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
        pending = self._submit(chunks[0]) if chunks else []
        for index in range(len(chunks)):
            current = pending
            pending = self._submit(chunks[index + 1]) if index + 1 < len(chunks) else []
            try:
                pixels = [future.result() for future in current]
            except ImageInputError as exc:
                raise TrainingError(f"an image that was readable at the start no longer is: {exc}") from None
            yield torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div_(255)

    def _submit(self, indices: Sequence[int]) -> list[Future[np.ndarray]]:
        return [self.pool.submit(self.load, self.paths[i]) for i in indices]
