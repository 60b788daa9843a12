"""Load a model for serving: resolve the device and dtype, then let the backend build and place it."""

from __future__ import annotations

import logging
from typing import Any

import torch

from clip_image_encoder.errors import OptionError
from clip_image_encoder.models.backends import backend_named
from clip_image_encoder.models.devices import resolve_device, resolve_dtype
from clip_image_encoder.models.identity import DEFAULT_MODEL
from clip_image_encoder.models.network import EmbeddingModel

logger = logging.getLogger(__name__)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "torch",
    **hub_kwargs: Any,
) -> EmbeddingModel:
    """Load a backbone (or an exported folder) with its preprocessing, placed on the device in the dtype."""
    runner = backend_named(backend)
    if dtype == "int8" and not runner.quantizable:
        raise OptionError(f"option dtype int8 quantises a torch backbone; backend {backend} cannot take it")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = runner.load(name_or_path, torch_device, torch_dtype, hub_kwargs)
    if dtype == "int8":
        # Measured in benchmarks/MODEL_SPEEDUPS.md.
        torch.ao.quantization.quantize_dynamic(model.module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    logger.info("loaded %s (%s backend) on %s as %s", name_or_path, backend, model.device, model.dtype)
    return model
