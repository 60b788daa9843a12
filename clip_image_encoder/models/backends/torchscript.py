"""The ``torchscript`` backend: an export folder's ``model.pt``, traced from the backbone and its read-out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clip_image_encoder.images.preprocessing import PreprocessConfig
from clip_image_encoder.models.network import EmbeddingModel, Network, export_example, exportable


def load(source: str, device: torch.device, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> EmbeddingModel:
    path = Path(source)
    module = torch.jit.load(str(path), map_location="cpu")
    preprocess = PreprocessConfig.from_pretrained(str(path.parent))
    with torch.inference_mode():  # the archive does not record D: one tiny forward tells it
        embedding_dim = int(module(torch.zeros(1, 3, *preprocess.output_size)).shape[-1])
    module.eval().to(device, dtype=dtype)
    return EmbeddingModel(Network(module, module, embedding_dim, preprocess), device, dtype)


def export(model: EmbeddingModel, target: Path) -> None:
    with torch.inference_mode(False), torch.no_grad():
        torch.jit.trace(exportable(model), export_example(model)).save(str(target))
