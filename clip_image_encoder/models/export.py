"""Export a loaded model to a folder that serves like any model folder, with ``backend: onnx`` or
``backend: torchscript``:

    model.onnx | model.pt         the network: (N, 3, H, W) float32 -> (N, D) float32, dynamic N
    preprocessor_config.json      its preprocessing, in Hugging Face keys

The file of each format and how it is written belong to its backend (`BACKENDS`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from clip_image_encoder.errors import OptionError
from clip_image_encoder.models.backends import EXPORT_FORMATS, backend_named
from clip_image_encoder.models.network import EmbeddingModel


def export_model(model: EmbeddingModel, fmt: str, out: Path) -> Path:
    """Write ``out/model.onnx`` (or ``model.pt``) and ``out/preprocessor_config.json``; return the model file."""
    if fmt not in EXPORT_FORMATS:
        raise OptionError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise OptionError("export a float32 model loaded on cpu (device='cpu', dtype='float32')")
    out.mkdir(parents=True, exist_ok=True)
    target = backend_named(fmt).export(model, out)
    (out / "preprocessor_config.json").write_text(json.dumps(model.preprocess.to_dict(), indent=2))
    return target
