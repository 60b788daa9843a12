"""The ``torch`` backend: a registered backbone built by its `Backbone` entry, placed on the device in the dtype."""

from __future__ import annotations

from typing import Any

import torch

from clip_image_encoder.models.backbones import load_backbone
from clip_image_encoder.models.network import EmbeddingModel


def load(source: str, device: torch.device, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> EmbeddingModel:
    network = load_backbone(source, dtype, hub_kwargs)
    network.module.eval().to(device, dtype=dtype)
    return EmbeddingModel(network, device, dtype)
