"""Load a vision backbone once, on the chosen device and dtype, and run it on ready batches.

Backbones are looked up by the ``model_type`` of their Hugging Face config in ``BACKBONES``,
a plain dictionary: adding one is one entry that says how to build it and how to read
the embedding from its output.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, CLIPVisionModelWithProjection, PreTrainedModel

from clip_image_encoder.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFoundError(RuntimeError):
    """The model could not be loaded from the hub, the cache or a local folder."""


@dataclass(frozen=True)
class Backbone:
    """How to build one family of models and read its image embedding."""

    model_class: type[PreTrainedModel]
    read_embedding: Callable[[Any], torch.Tensor]
    """Takes the model output, returns ``(N, D)`` embeddings."""
    embedding_dim: Callable[[Any], int]
    """Takes the model config, returns D."""


BACKBONES: dict[str, Backbone] = {
    # A full CLIP checkpoint (model_type "clip") loads its vision tower and projection only.
    "clip": Backbone(
        CLIPVisionModelWithProjection,
        read_embedding=lambda output: output.image_embeds,
        embedding_dim=lambda config: config.projection_dim,
    ),
    "clip_vision_model": Backbone(
        CLIPVisionModelWithProjection,
        read_embedding=lambda output: output.image_embeds,
        embedding_dim=lambda config: config.projection_dim,
    ),
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first cuda GPU when one is visible, else the cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no cuda GPU")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on cuda (tensor cores) and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class EmbeddingModel:
    """A loaded backbone with its preprocessing config: ``(N, 3, H, W)`` float32 in, ``(N, D)`` float32 out."""

    def __init__(
        self,
        module: PreTrainedModel,
        backbone: Backbone,
        preprocess: PreprocessConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.module = module
        self.backbone = backbone
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.embedding_dim = backbone.embedding_dim(module.config)
        # One forward at a time: concurrent requests overlap their decoding with it, not each other's matmuls.
        self._forward_lock = threading.Lock()

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
        if self.device.type == "cuda":
            pixel_values = pixel_values.pin_memory()
        with self._forward_lock:
            inputs = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
            output = self.module(pixel_values=inputs)
            return self.backbone.read_embedding(output).float().cpu().numpy()

    def warm_up(self) -> None:
        """One forward pass at start, so that the first request does not pay for lazy initialisation."""
        height, width = self.preprocess.output_size
        self.embed(torch.zeros(1, 3, height, width))


def configure_cpu_threads(num_threads: int, replicas: int = 1) -> int:
    """Set torch's intra-op threads; 0 means the cores shared out among the replicas on this machine.

    Each Jina replica is a process with its own torch thread pool: without this, N replicas
    run N x cores threads and slow each other down.
    """
    if num_threads <= 0:
        num_threads = max(1, (os.cpu_count() or 1) // max(1, replicas))
    torch.set_num_threads(num_threads)
    return num_threads


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    **hub_kwargs: Any,
) -> EmbeddingModel:
    """Load a backbone and its preprocessing from a hub name or a local folder.

    The Hugging Face cache (``HF_HOME``) and offline mode (``HF_HUB_OFFLINE=1``) are honoured
    through ``from_pretrained``; remote code is never trusted.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder = Path(name_or_path).expanduser()
    if (folder.is_absolute() or name_or_path.startswith(".")) and not folder.is_dir():
        raise ModelNotFoundError(f"model folder {name_or_path!r} does not exist")
    source = str(folder) if folder.is_dir() else name_or_path
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **hub_kwargs)
        backbone = _backbone_for(config.model_type, name_or_path)
        module = backbone.model_class.from_pretrained(source, dtype=torch_dtype, trust_remote_code=False, **hub_kwargs)
        preprocess = PreprocessConfig.from_pretrained(source, **hub_kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"model {name_or_path!r} could not be loaded ({exc}). Offline, either pass a local "
            "folder made with save_pretrained, or mount a Hugging Face cache that holds the "
            "model and point HF_HOME at it (e.g. docker run -v ~/.cache/huggingface:/cache)."
        ) from exc
    module.eval().to(torch_device)
    logger.info("loaded %s on %s as %s", name_or_path, torch_device, torch_dtype)
    return EmbeddingModel(module, backbone, preprocess, torch_device, torch_dtype)


def _backbone_for(model_type: str, name_or_path: str) -> Backbone:
    try:
        return BACKBONES[model_type]
    except KeyError:
        raise ValueError(
            f"model {name_or_path!r} has model_type {model_type!r}; supported: {', '.join(BACKBONES)}"
        ) from None
