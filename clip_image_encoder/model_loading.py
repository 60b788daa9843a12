"""Load a model for serving: pick the device and dtype, then the backend that builds the network.

Backends: ``torch`` builds a registered backbone (`backbones`); ``onnx`` and ``torchscript``
serve a folder made by ``clip-image-encoder export`` (`exported`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from clip_image_encoder.backbones import load_backbone
from clip_image_encoder.exported import load_onnx, load_torchscript
from clip_image_encoder.model import EmbeddingModel
from clip_image_encoder.options import BACKENDS, DEFAULT_MODEL

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first cuda GPU when one is visible, else the cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no cuda GPU")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on cuda (tensor cores) and float32 elsewhere; ``int8`` computes in float32."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "int8":
        if device.type != "cpu":
            raise ValueError("dtype int8 (dynamic quantisation of linear layers) runs on cpu only")
        return torch.float32
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, int8, {', '.join(_TORCH_DTYPES)}")
    return _TORCH_DTYPES[dtype]


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "torch",
    **hub_kwargs: Any,
) -> EmbeddingModel:
    """Load a backbone (or an exported folder) with its preprocessing, placed on the device in the dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if dtype == "int8" and backend != "torch":
        raise ValueError(f"dtype int8 quantises a torch backbone; backend {backend} cannot take it")
    torch_device = resolve_device(device)
    if backend == "onnx":
        return load_onnx(name_or_path, torch_device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if backend == "torchscript":
        network = load_torchscript(name_or_path)
    else:
        network = load_backbone(name_or_path, torch_dtype, hub_kwargs)
    network.module.eval().to(torch_device, dtype=torch_dtype)
    if dtype == "int8":
        # Measured in benchmarks/MODEL_SPEEDUPS.md.
        torch.ao.quantization.quantize_dynamic(network.module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    logger.info("loaded %s (%s backend) on %s as %s", name_or_path, backend, torch_device, torch_dtype)
    return EmbeddingModel(network, torch_device, torch_dtype)
