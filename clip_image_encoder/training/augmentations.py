"""The views a method trains on: random crops and photometric changes, on tensors, on the training device.

A `ViewSpec` is data (crop scale, output size, jitter, blur, solarisation probabilities), as each paper
states it; `Augmenter` builds the kornia pipeline for one spec. Input is the batch as decoded and
framed by the model's own preprocessing, ``(N, 3, H, W)`` float32 in [0, 1]; output is normalised
with the model's mean and std, as the served model sees its inputs. kornia needs no torchvision, which
cannot be installed beside this torch build (``../shared/FACTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clip_image_encoder.extras import require
from clip_image_encoder.images.preprocessing import PreprocessConfig


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view; the probabilities are per image."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Fraction of the image area that the random resized crop keeps."""
    size_fraction: float = 1.0
    """Output side as a fraction of the model's input side (SwAV's local crops: 96 / 224)."""
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    """Colour jitter (brightness, contrast, saturation, hue): SimCLR's distortion at strength 1."""
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    solarize_probability: float = 0.0
    flip_probability: float = 0.5


def output_size(spec: ViewSpec, model_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a view for a model whose input is ``model_size``."""
    return tuple(max(1, round(side * spec.size_fraction)) for side in model_size)  # type: ignore[return-value]


class Augmenter(torch.nn.Module):
    """One `ViewSpec` as a kornia pipeline: ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, h, w)`` normalised.

    Randomness comes from torch's global generator, which the trainer seeds for every step: the
    same seed and step give the same views, on a fresh run and on a resumed one.
    """

    def __init__(
        self,
        spec: ViewSpec,
        size: tuple[int, int],
        preprocess: PreprocessConfig,
        upsample_to: tuple[int, int] | None = None,
    ) -> None:
        """``upsample_to``: resize the view to this size last, for a backbone that takes no other input size."""
        K = require("kornia.augmentation", "train", "training")  # here, not at import: a start would pay for it

        super().__init__()
        self.size, self.upsample_to = size, upsample_to
        # SimCLR's blur kernel is 10% of the image side (odd), sigma uniform in [0.1, 2.0].
        kernel = max(3, int(0.1 * min(size)) // 2 * 2 + 1)
        steps: list[torch.nn.Module] = [
            K.RandomResizedCrop(size, scale=spec.crop_scale, resample="BICUBIC", align_corners=False),
            K.RandomHorizontalFlip(p=spec.flip_probability),
            K.ColorJitter(*spec.jitter, p=spec.jitter_probability),
            K.RandomGrayscale(p=spec.grayscale_probability),
        ]
        if spec.blur_probability > 0:
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=spec.blur_probability))
        if spec.solarize_probability > 0:
            # Threshold 0.5 and no brightness shift: PIL's ImageOps.solarize(threshold=128), as Barlow Twins uses.
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize_probability))
        self.steps = torch.nn.Sequential(*steps)
        self.normalize = preprocess.do_normalize
        self.register_buffer("mean", torch.tensor(preprocess.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.image_std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = self.steps(images)
        if self.upsample_to is not None:
            views = F.interpolate(views, size=self.upsample_to, mode="bicubic", align_corners=False)
        views = views.clamp_(0, 1)  # bicubic resampling overshoots [0, 1] slightly
        return (views - self.mean) / self.std if self.normalize else views
