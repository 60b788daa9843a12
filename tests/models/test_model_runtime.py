"""The model's runtime paths that a GPU takes, exercised on the cpu: out-of-memory halving and prefetching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.errors import ImageInputError, ModelError
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.models.network import EmbeddingModel


def test_out_of_memory_halves_the_batch_instead_of_failing(tiny_model_dir: Path):
    model = load_model(str(tiny_model_dir), device="cpu")
    forward = model.forward
    sizes: list[int] = []

    def forward_that_fits_two(pixel_values: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixel_values))
        if len(pixel_values) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(pixel_values)

    batch = torch.randn(5, 3, 224, 224)
    expected = model.embed(batch)
    model.forward = forward_that_fits_two
    embedded = model.embed(batch)
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, and 3 -> 1 + 2
    np.testing.assert_allclose(embedded, expected, rtol=1e-4, atol=1e-5)


def test_a_single_image_that_does_not_fit_still_fails(tiny_model_dir: Path):
    model = load_model(str(tiny_model_dir), device="cpu")

    def never_fits(pixel_values: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    model.forward = never_fits
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model.embed(torch.randn(1, 3, 224, 224))


def test_prefetching_batches_keeps_order_and_results(tiny_model_dir: Path, photo_variants: list[np.ndarray]):
    """On cuda the encoder decodes two batches ahead of the model; the results must not change."""
    model: EmbeddingModel = load_model(str(tiny_model_dir), device="cpu")
    inputs = [*photo_variants[:7], b"not an image", *photo_variants[7:12]]
    outputs = []
    for prefetch in (0, 2):
        encoder = ImageEncoder(model, prefetch_batches=prefetch)
        try:
            outputs.append(list(encoder.encode(inputs, EncoderOptions(batch_size=3))))
        finally:
            encoder.close()
    sequential, prefetched = outputs
    assert len(prefetched) == len(inputs)
    for index, (a, b) in enumerate(zip(sequential, prefetched, strict=True)):
        if index == 7:
            assert not isinstance(b, np.ndarray)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_model_failure_is_a_model_error_of_that_batch_not_an_input_error(tiny_model_dir: Path, photos):
    model = load_model(str(tiny_model_dir), device="cpu")
    forward = model.forward
    calls = []

    def fails_on_second_batch(pixel_values: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixel_values))
        if len(calls) == 3:  # the warm-up, then the first image; the second one fails
            raise RuntimeError("device lost (simulated)")
        return forward(pixel_values)

    model.forward = fails_on_second_batch
    with ImageEncoder(model) as encoder:
        results = list(encoder.encode([photos["astronaut"], photos["coffee"], b"broken"], EncoderOptions(batch_size=1)))
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], ModelError) and results[1].reason == "model"
    assert "model failed on this batch (RuntimeError: device lost" in str(results[1])
    assert isinstance(results[2], ImageInputError) and results[2].reason == "undecodable"
