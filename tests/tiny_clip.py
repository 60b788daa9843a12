"""Tiny random CLIP checkpoints, built offline: a vision tower alone, or both towers with a byte-level tokenizer.

The tests build theirs here, and the benchmarks that need a model with no real weights import this module too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
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
