"""The copy-detection read-out (``efficientnet-lite0-copy``): GeM, the mirror, the shipped whitening, and that it
finds edited copies which the image-search read-out of the same weights misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cosine, heavy_copy
from safetensors import safe_open

from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.models.backbones import backbone_of
from clip_image_encoder.models.copy_detection import WHITENING_FILE, CopyReadout, Whitening, gem, pooled_descriptor
from clip_image_encoder.models.loading import load_model

COPY_MODEL = "efficientnet-lite0-copy"


def test_gem_is_average_pooling_at_p_1_and_nears_max_pooling_as_p_grows():
    features = torch.rand(2, 5, 4, 3)
    assert torch.allclose(gem(features, 1.0), features.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(gem(features, 200.0), features.amax(dim=(2, 3)), rtol=0.02)
    assert (gem(features, 3.0) > features.mean(dim=(2, 3))).all()


def test_the_pooled_descriptor_sums_unit_descriptors_of_every_scale_and_the_mirror():
    def features(view: torch.Tensor) -> torch.Tensor:  # a stand-in backbone: stride-2 average of the pixels
        return torch.nn.functional.avg_pool2d(view.abs(), 2)

    pixels = torch.rand(1, 3, 32, 32)
    readout = CopyReadout(gem_p=3.0, scales=(1.0, 0.5), mirror=True)
    expected = sum(
        torch.nn.functional.normalize(gem(features(view), 3.0), dim=1)
        for scaled in (
            pixels,
            torch.nn.functional.interpolate(pixels, scale_factor=0.5, mode="bilinear", antialias=True),
        )
        for view in (scaled, scaled.flip(3))
    )
    assert torch.allclose(pooled_descriptor(features, pixels, readout), torch.nn.functional.normalize(expected))


def test_the_shipped_whitening_is_a_safetensors_file_that_says_how_it_was_made():
    whitening = Whitening.load()
    assert whitening.mean.shape == (1280,) and whitening.projection.shape == (1280, whitening.dim)
    assert torch.isfinite(whitening.projection).all()
    with safe_open(str(WHITENING_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    assert "benchmarks/copy_whitening.py" in metadata["written_by"] and "the training part" in metadata["photos"]


@pytest.fixture(scope="module")
def copy_encoder() -> ImageEncoder:
    encoder = ImageEncoder(load_model(COPY_MODEL, device="cpu"), DecodeLimits())
    yield encoder
    encoder.close()


@pytest.fixture(scope="module")
def search_encoder() -> ImageEncoder:
    encoder = ImageEncoder(load_model("efficientnet-lite0", device="cpu"), DecodeLimits())
    yield encoder
    encoder.close()


def test_the_copy_read_out_is_a_packaged_backbone_with_a_calibrated_threshold():
    backbone = backbone_of(COPY_MODEL)
    assert backbone.name == COPY_MODEL and not backbone.model_types
    assert backbone.duplicate_threshold is not None and 0 < backbone.duplicate_threshold < 1


def test_the_copy_descriptor_is_unit_length_deterministic_and_not_the_search_embedding(
    copy_encoder, search_encoder, photos
):
    first, again = (next(iter(copy_encoder.encode([photos["coffee"]]))) for _ in range(2))
    assert first.shape == (Whitening.load().dim,) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    (search,) = list(search_encoder.encode([photos["coffee"]]))
    assert search.shape == (1280,)  # the image-search embedding keeps its average pooling and size


def test_a_mirrored_copy_is_a_duplicate_of_its_original_at_the_default_threshold(copy_encoder, photos):
    original, mirrored = copy_encoder.encode([photos["chelsea"], np.ascontiguousarray(photos["chelsea"][:, ::-1])])
    assert cosine(original, mirrored) >= backbone_of(COPY_MODEL).duplicate_threshold


def test_a_cropped_captioned_copy_ranks_its_original_first_and_well_above_the_others(copy_encoder, photos):
    names = sorted(photos)
    originals = dict(zip(names, copy_encoder.encode([photos[name] for name in names]), strict=True))
    for name in names:
        (query,) = list(copy_encoder.encode([heavy_copy(photos[name])]))
        ranked = sorted(names, key=lambda other: -cosine(query, originals[other]))
        assert ranked[0] == name, (name, ranked)
