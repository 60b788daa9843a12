"""Preprocessing: a config read from the model's ``preprocessor_config.json``, and the one object it builds.

`PreprocessConfig` is data, in Hugging Face's keys. `Preprocessor` owns every step from a decoded
image to the model's input batch, in two stages:

- per image (in the decode threads; images differ in size): the client's view (roi, rotation),
  then resize of the short side and centre crop (zero padding where the image is smaller), in
  Pillow, giving ``(H, W, 3)`` uint8;
- per batch: rescale and normalise once, as torch tensor ops, giving ``(N, 3, H, W)`` float32.

The steps match the Hugging Face ``CLIPImageProcessor`` (PIL backend) numerically. The fast mode
is the preprocessor's business alone: a reduced-size JPEG decode (`draft_size`) and a two-step
resize, which differ slightly from the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_base import ImageProcessingMixin

from clip_image_encoder.errors import ImageInputError, ModelNotFoundError
from clip_image_encoder.images.views import select_view

FAST_DRAFT_FACTOR = 2
"""Fast mode lets JPEG decoding shrink an image to no less than this many times the resize target."""
FAST_REDUCING_GAP = 2.0
"""Fast mode resizes large images in two steps (Pillow ``reducing_gap``): box reduce, then the filter."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The model's own preprocessing, named as in ``preprocessor_config.json``."""

    do_resize: bool = True
    shortest_edge: int | None = 224
    """Resize so that the short side has this length (aspect kept); or None to use ``size``."""
    size: tuple[int, int] | None = None
    """(height, width) to resize to exactly, when there is no ``shortest_edge``."""
    resample: Image.Resampling = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)
    """(height, width) of the centre crop."""
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PreprocessConfig:
        """Read the keys of a Hugging Face image processor config; missing keys keep CLIP's defaults."""
        size = config.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = config.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if "shortest_edge" not in size and "height" not in size:
            raise ModelNotFoundError(
                f"preprocessor_config.json has an unsupported resize size {size}: expected shortest_edge, or height "
                "and width"
            )
        defaults = cls()
        return cls(
            do_resize=config.get("do_resize", True),
            shortest_edge=size.get("shortest_edge"),
            size=(size["height"], size["width"]) if "height" in size else None,
            resample=Image.Resampling(config.get("resample", defaults.resample)),
            # Processors without a crop step (ViT, SigLIP) have neither key: then there is no crop.
            do_center_crop=config.get("do_center_crop", "crop_size" in config),
            crop_size=(crop["height"], crop["width"]),
            do_rescale=config.get("do_rescale", True),
            rescale_factor=config.get("rescale_factor", defaults.rescale_factor),
            do_normalize=config.get("do_normalize", True),
            image_mean=tuple(config.get("image_mean", defaults.image_mean)),
            image_std=tuple(config.get("image_std", defaults.image_std)),
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, **hub_kwargs: Any) -> PreprocessConfig:
        """Load ``preprocessor_config.json`` of a hub name or local folder (HF cache and offline mode honoured)."""
        config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, **hub_kwargs)
        return cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        """The config in ``preprocessor_config.json`` keys, so that ``from_pretrained`` reads it back."""
        if self.shortest_edge is not None:
            size: dict[str, int] = {"shortest_edge": self.shortest_edge}
        else:
            height, width = self.size or self.crop_size
            size = {"height": height, "width": width}
        return {
            "do_resize": self.do_resize,
            "size": size,
            "resample": int(self.resample),
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the model input that this config produces."""
        if self.do_center_crop:
            return self.crop_size
        if self.size is not None:
            return self.size
        raise ModelNotFoundError(
            "preprocessor_config.json resizes the shortest edge without a centre crop: inputs of varying size, which "
            "no batch can hold"
        )


class Preprocessor:
    """A model's preprocessing, exact (the reference's numbers) or ``fast`` (reduced-size JPEG decoding and a
    two-step resize)."""

    def __init__(self, config: PreprocessConfig, fast: bool = False) -> None:
        self.config = config
        self.fast = fast

    def draft_size(self, roi: tuple[int, int, int, int] | None = None) -> int | None:
        """Smallest side the JPEG decoder may shrink an image to; None (full decode) unless fast.

        A roi is in full-size pixel coordinates, so an image with one is decoded in full.
        """
        if not self.fast or roi is not None:
            return None
        target = self.config.shortest_edge or max(self.config.size or self.config.crop_size)
        return FAST_DRAFT_FACTOR * target

    def image(self, image: Image.Image, roi: tuple[int, int, int, int] | None = None, rotation: int = 0) -> np.ndarray:
        """The per-image stage: the client's view of one RGB image, resized and cropped: ``(H, W, 3)`` uint8."""
        return self.resize_and_crop(select_view(image, roi, rotation))

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """Resize and centre-crop one RGB image: ``(H, W, 3)`` uint8 at ``config.output_size``."""
        config = self.config
        if config.do_resize:
            width, height = _resized_width_height(image.width, image.height, config)
            if (width, height) != image.size:
                image = image.resize(
                    (width, height),
                    resample=config.resample,
                    reducing_gap=FAST_REDUCING_GAP if self.fast else None,
                )
        if config.do_center_crop:
            crop_height, crop_width = config.crop_size
            # Pillow fills the part of the box outside the image with zeros, as the reference pads.
            top = (image.height - crop_height) // 2
            left = (image.width - crop_width) // 2
            image = image.crop((left, top, left + crop_width, top + crop_height))
        return np.asarray(image)

    def model_input(self, array: np.ndarray) -> np.ndarray:
        """Validate a client's already preprocessed ``(3, H, W)`` float input, which skips preprocessing."""
        expected = (3, *self.config.output_size)
        if tuple(array.shape) != expected:
            raise ImageInputError(f"preprocessed tensor has shape {tuple(array.shape)}, the model expects {expected}")
        model_input = array.astype(np.float32, copy=False)
        if not np.isfinite(model_input).all():
            raise ImageInputError("preprocessed tensor contains NaN or infinite values")
        return model_input

    def batch(self, prepared: list[np.ndarray]) -> torch.Tensor:
        """The per-batch stage: ``(H, W, 3)`` uint8 pixels and ready ``(3, H, W)`` float32 inputs, in their
        order, into one ``(N, 3, H, W)`` float32 batch; pixels are rescaled and normalised here, once.
        """
        pixel_rows = [i for i, item in enumerate(prepared) if item.dtype == np.uint8]
        if len(pixel_rows) == len(prepared):
            return self._normalized(prepared)
        batch = torch.empty(len(prepared), 3, *self.config.output_size)
        if pixel_rows:
            batch[pixel_rows] = self._normalized([prepared[i] for i in pixel_rows])
        for i, item in enumerate(prepared):
            if item.dtype != np.uint8:
                batch[i] = torch.from_numpy(item)
        return batch

    def _normalized(self, pixels: list[np.ndarray]) -> torch.Tensor:
        # Converting straight into contiguous channels-first memory keeps the in-place ops below on dense
        # memory, which is faster than converting the strided view and copying at the end (same values).
        batch = (
            torch.from_numpy(np.stack(pixels))
            .permute(0, 3, 1, 2)
            .to(torch.float32, memory_format=torch.contiguous_format)
        )
        if self.config.do_rescale:
            batch.mul_(self.config.rescale_factor)
        if self.config.do_normalize:
            mean = torch.tensor(self.config.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.config.image_std, dtype=torch.float32).view(1, 3, 1, 1)
            batch.sub_(mean).div_(std)
        return batch


def is_model_input(array: np.ndarray) -> bool:
    """A float array with 3 leading channels is a preprocessed model input, not pixels."""
    return np.issubdtype(array.dtype, np.floating) and array.ndim == 3 and array.shape[0] == 3


def _resized_width_height(width: int, height: int, config: PreprocessConfig) -> tuple[int, int]:
    """Output size of the resize step, rounded exactly as ``get_resize_output_image_size`` does."""
    if config.shortest_edge is None:
        target_height, target_width = config.size or config.crop_size
        return target_width, target_height
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = config.shortest_edge, int(config.shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)
