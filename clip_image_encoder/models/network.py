"""A loaded network and how it runs: ``(N, 3, H, W)`` float32 in, ``(N, D)`` float32 embeddings out.

`Network` is what every backbone and backend produces; `EmbeddingModel` places it on a device and
runs it, halving the batch on cuda out-of-memory instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from clip_image_encoder.images.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Network:
    """A backbone as loaded: the module, how to read its embedding, and its preprocessing."""

    module: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    """Maps a batch already on the device, in the model's dtype, to ``(N, D)`` embeddings."""
    embedding_dim: int
    preprocess: PreprocessConfig


class EmbeddingModel:
    """A network on its device and dtype, with its preprocessing.

    Not thread-safe by itself: `ImageEncoder` runs every call on its one model thread.
    """

    def __init__(
        self, network: Network, device: torch.device, dtype: torch.dtype, input_device: torch.device | None = None
    ) -> None:
        """``device``: where the model runs (reported in metrics; on cuda, decoding overlaps the model);
        ``input_device``: where its inputs go, when it places them itself (onnxruntime takes cpu arrays)."""
        self.module = network.module
        self.forward = network.forward
        self.embedding_dim = network.embedding_dim
        self.preprocess = network.preprocess
        self.device = device
        self.dtype = dtype
        self.input_device = input_device or device

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Embed one batch; on cuda out-of-memory, embed it in halves instead of failing."""
        try:
            return self._forward(pixel_values)
        except torch.cuda.OutOfMemoryError:
            if len(pixel_values) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(pixel_values) // 2
            logger.warning("cuda out of memory at batch %d; retrying in halves", len(pixel_values))
            return np.concatenate([self.embed(pixel_values[:half]), self.embed(pixel_values[half:])])

    def _forward(self, pixel_values: torch.Tensor) -> np.ndarray:
        if self.input_device.type == "cuda":
            pixel_values = pixel_values.pin_memory()
        inputs = pixel_values.to(self.input_device, dtype=self.dtype, non_blocking=True)
        return self.forward(inputs).float().cpu().numpy()

    def warm_up(self) -> None:
        """One forward pass at start, so that the first request does not pay for lazy initialisation."""
        height, width = self.preprocess.output_size
        self.embed(torch.zeros(1, 3, height, width))


class _Exportable(torch.nn.Module):
    """The backbone with its embedding read-out, as one module with one tensor in and one out."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.backbone = model.module
        self._forward = model.forward

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._forward(pixel_values)


def exportable(model: EmbeddingModel) -> torch.nn.Module:
    """What an export traces: ``(N, 3, H, W)`` float32 in, ``(N, D)`` float32 out."""
    return _Exportable(model).eval()


def export_example(model: EmbeddingModel) -> torch.Tensor:
    """A batch of two zero inputs of the model's size, to trace an export with."""
    height, width = model.preprocess.output_size
    return torch.zeros(2, 3, height, width)
