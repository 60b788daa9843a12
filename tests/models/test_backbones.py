"""Backbones beyond CLIP: Hugging Face SigLIP, DINOv2 and ViT folders, and the packaged EfficientNet-Lite0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cosine, encode_image
from PIL import Image
from tiny_clip import VISION_FAMILIES, save_tiny_backbone

from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.models.loading import load_model


def reference_embedding(family: str, folder: Path, image: Image.Image) -> np.ndarray:
    model_class, _, processor_class = VISION_FAMILIES[family]
    model = model_class.from_pretrained(folder).eval()
    pixel_values = processor_class.from_pretrained(folder)(images=[image], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        output = model(pixel_values=pixel_values)
    pooled = output.last_hidden_state[:, 0] if family == "vit" else output.pooler_output
    return pooled[0].numpy()


@pytest.mark.parametrize("family", sorted(VISION_FAMILIES))
def test_hugging_face_backbone_matches_its_own_processor_and_model(family, tmp_path, photos):
    save_tiny_backbone(family, tmp_path)
    encoder = ImageEncoder(load_model(str(tmp_path), device="cpu"), DecodeLimits())
    image = Image.fromarray(photos["chelsea"])
    (ours,) = list(encoder.encode([photos["chelsea"]]))
    encoder.close()
    assert ours.shape == (32,)
    assert cosine(ours, reference_embedding(family, tmp_path, image)) >= 0.99999


@pytest.fixture(scope="module")
def efficientnet() -> ImageEncoder:
    encoder = ImageEncoder(load_model("efficientnet-lite0", device="cpu"), DecodeLimits())
    yield encoder
    encoder.close()


def test_packaged_efficientnet_loads_offline_with_1280_dimensions(efficientnet, photos):
    (embedding,) = list(efficientnet.encode([photos["coffee"]]))
    assert embedding.shape == (1280,) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all() and np.linalg.norm(embedding) > 0


def test_packaged_efficientnet_ranks_an_edited_copy_above_unrelated_photos(efficientnet, photos):
    names = sorted(photos)
    originals = dict(zip(names, efficientnet.encode([photos[n] for n in names]), strict=True))
    for name in ("astronaut", "chelsea", "coffee"):
        image = Image.fromarray(photos[name])
        width, height = image.size
        edited = image.crop((width // 8, height // 8, width - width // 8, height - height // 8)).resize(
            (width // 2, height // 2)
        )
        (query,) = list(efficientnet.encode([encode_image(edited, "JPEG", quality=40)]))
        ranked = sorted(names, key=lambda other: -cosine(query, originals[other]))
        assert ranked[0] == name, (name, ranked)
