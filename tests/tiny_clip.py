"""Tiny random CLIP checkpoints, built offline: a vision tower alone, or both towers with a byte-level tokenizer.

The tests build theirs here, and the benchmarks that need a model with no real weights import this module too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModel,
    BitImageProcessorPil,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    PreTrainedModel,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTImageProcessorPil,
)

CONTEXT_LENGTH = 16
PROJECTION_DIM = 16
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
VISION = {**TOWER, "image_size": 224, "patch_size": 32}


def save_tiny_vision_tower(folder: Path, image_size: int = 224, patch_size: int = 32, seed: int = 0) -> Path:
    """A random ViT CLIP vision tower with its projection (16-d) and image processor, in the save_pretrained
    layout that users' folders have; ``image_size`` is also the processor's resize and crop."""
    config = CLIPVisionConfig(**TOWER, image_size=image_size, patch_size=patch_size, projection_dim=PROJECTION_DIM)
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


VISION_FAMILIES = {
    "siglip": (SiglipVisionModel, SiglipVisionConfig, SiglipImageProcessorPil),
    "dinov2": (AutoModel, Dinov2Config, BitImageProcessorPil),
    "vit": (AutoModel, ViTConfig, ViTImageProcessorPil),
}
"""The Hugging Face backbones beyond CLIP: (model class, config class, the family's own image processor)."""


def save_tiny_backbone(family: str, folder: Path, image_size: int = 224, patch_size: int = 32, seed: int = 0) -> Path:
    """A random tiny SigLIP, DINOv2 or ViT with its family's processor at ``image_size``, as users' folders are."""
    model_class, config_class, processor_class = VISION_FAMILIES[family]
    config = config_class(image_size=image_size, patch_size=patch_size, **TOWER)
    torch.manual_seed(seed)
    model: PreTrainedModel = AutoModel.from_config(config) if model_class is AutoModel else model_class(config)
    model.save_pretrained(folder)
    square = {"height": image_size, "width": image_size}
    sizes = {"size": {"shortest_edge": image_size}, "crop_size": square} if family == "dinov2" else {"size": square}
    processor_class(**sizes).save_pretrained(folder)
    return folder


def byte_level_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer with a vocabulary of single bytes (and a few merges): every text encodes, offline."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = [chr(code) for code in printable]
    characters += [chr(256 + n) for n in range(256 - len(printable))]  # GPT-2's stand-ins for the other bytes
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("c", "a"), ("ca", "t</w>")]
    vocab = [*characters, *(c + "</w>" for c in characters), *(left + right for left, right in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def text_config(tokenizer: CLIPTokenizer) -> dict:
    """A tiny text tower for this tokenizer: its vocabulary, its special tokens, a 16-token context."""
    return {
        **TOWER,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": CONTEXT_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random whole CLIP (both towers, projections to 16-d) with its tokenizer and image processor."""
    tokenizer = byte_level_tokenizer()
    config = CLIPConfig(
        text_config={**text_config(tokenizer), "projection_dim": PROJECTION_DIM},
        vision_config={**VISION, "projection_dim": PROJECTION_DIM},
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder
