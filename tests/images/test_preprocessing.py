"""Preprocessing equals the Hugging Face CLIPImageProcessor (PIL backend) pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from clip_image_encoder.errors import ImageInputError
from clip_image_encoder.images.preprocessing import PreprocessConfig, Preprocessor, is_model_input


def ours(images: list[Image.Image], config: PreprocessConfig) -> torch.Tensor:
    preprocessor = Preprocessor(config)
    return preprocessor.batch([preprocessor.image(image) for image in images])


def hugging_face(images: list[Image.Image], processor: CLIPImageProcessorPil) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (225, 224), (1000, 37), (7, 5), (1, 1)])
def test_matches_the_reference_for_every_aspect_ratio(photos, size):
    image = Image.fromarray(photos["chelsea"]).resize(size)
    config = PreprocessConfig()
    np.testing.assert_allclose(ours([image], config), hugging_face([image], CLIPImageProcessorPil()), atol=1e-6)


def test_matches_the_reference_on_real_photos_in_one_batch(photos):
    images = [Image.fromarray(photo) for photo in photos.values()]
    reference = hugging_face(images, CLIPImageProcessorPil())
    np.testing.assert_allclose(ours(images, PreprocessConfig()), reference, atol=1e-6)


def test_config_from_the_model_folder_drives_every_step(photos, tmp_path):
    custom = CLIPImageProcessorPil(
        size={"shortest_edge": 64},
        crop_size={"height": 48, "width": 56},
        resample=Image.Resampling.BILINEAR,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
    )
    custom.save_pretrained(tmp_path)
    config = PreprocessConfig.from_pretrained(str(tmp_path))
    assert config.output_size == (48, 56)
    assert config.resample == Image.Resampling.BILINEAR
    image = Image.fromarray(photos["rocket"])
    np.testing.assert_allclose(ours([image], config), hugging_face([image], custom), atol=1e-6)


def test_fixed_size_resize_without_crop_matches_the_reference(photos):
    processor = CLIPImageProcessorPil(size={"height": 96, "width": 128}, do_center_crop=False)
    config = PreprocessConfig.from_dict(processor.to_dict())
    image = Image.fromarray(photos["coffee"])
    np.testing.assert_allclose(ours([image], config), hugging_face([image], processor), atol=1e-6)


def test_fast_mode_stays_close_to_exact(photos):
    image = Image.fromarray(photos["astronaut"]).resize((2048, 2048))
    config = PreprocessConfig()
    exact = Preprocessor(config).image(image).astype(int)
    fast = Preprocessor(config, fast=True).image(image).astype(int)
    assert fast.shape == exact.shape
    assert np.abs(fast - exact).mean() < 2.0


def test_preprocessed_input_is_recognised_and_checked():
    preprocessor = Preprocessor(PreprocessConfig())
    ready = np.zeros((3, 224, 224), dtype=np.float32)
    assert is_model_input(ready)
    assert not is_model_input(np.zeros((224, 224, 3), dtype=np.uint8))
    assert preprocessor.model_input(ready).shape == (3, 224, 224)
    with pytest.raises(ImageInputError, match=r"model expects \(3, 224, 224\)"):
        preprocessor.model_input(np.zeros((3, 100, 100), dtype=np.float32))
    with pytest.raises(ImageInputError, match="NaN"):
        preprocessor.model_input(np.full((3, 224, 224), np.nan, dtype=np.float32))
