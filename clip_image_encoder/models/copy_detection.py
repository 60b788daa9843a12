"""The copy-detection read-out of a convolutional backbone: *which* photo an image is, not what it shows.

The image-search read-out of EfficientNet-Lite0 averages the last feature map of a centre crop, which
says what a photo shows: two photos of one kind of thing score as high as a photo and its copy. Copy
detection (the descriptor track of ISC21) needs the instance, so this read-out
(``efficientnet-lite0-copy``, `CopyReadout`):

- sees the whole image squashed to a square (`COPY_PREPROCESS`): a crop or a stretched copy keeps
  most of the frame, and a stretch is undone;
- pools the last feature map with GeM (generalised mean, p=3), which weights the strongest local
  responses (the objects) over the background;
- sums the l2-normalised descriptors of the image at two scales (320 and 224 px), so that a zoom (a
  crop) moves the descriptor less;
- whitens the sum (`Whitening`): centres it on the mean of photos and rescales their principal
  directions to unit variance, so that what distinct photos share (a dark sky, a centred blob) stops
  dominating the cosine. The matrix ships beside this module (`WHITENING_FILE`, written by
  ``benchmarks/copy_whitening.py`` from photos that ``benchmarks/duplicates_isc.py`` never scores).

What each step gained is in ``benchmarks/COPY_DETECTION.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from clip_image_encoder.errors import ModelNotFoundError
from clip_image_encoder.images.preprocessing import PreprocessConfig

COPY_INPUT_SIZE = 320
"""Side of the square the whole image is resized to; the feature map is 10 x 10 (stride 32)."""
COPY_PREPROCESS = PreprocessConfig(
    shortest_edge=None,
    size=(COPY_INPUT_SIZE, COPY_INPUT_SIZE),
    do_center_crop=False,
    resample=Image.Resampling.BICUBIC,
    image_mean=(127 / 255,) * 3,  # EfficientNet-Lite's own input scaling, as the image-search read-out
    image_std=(128 / 255,) * 3,
)
WHITENING_FILE = Path(__file__).with_name("copy_whitening.safetensors")
"""``mean`` ``(C,)`` and ``projection`` ``(C, D)`` float32, with the recipe in its metadata."""


@dataclass(frozen=True)
class CopyReadout:
    """How the feature maps become one descriptor (the defaults are those benchmarked)."""

    gem_p: float = 3.0
    """GeM exponent: 1 is average pooling, large values approach max pooling."""
    scales: tuple[float, ...] = (1.0, 0.7)
    """Input scales, as factors of `COPY_INPUT_SIZE` (multiples of 32 keep the static padding exact)."""
    mirror: bool = False
    """Also pool the left-right mirror image (flipped copies then score exactly as the original): off, since it
    doubles the cost and gained 0.001 µAP (GeM of this backbone is nearly mirror-invariant already)."""


@dataclass(frozen=True)
class Whitening:
    """``(x - mean) @ projection``, learned on distractor photos; an affine map, so it runs on any device."""

    mean: torch.Tensor
    """``(C,)``"""
    projection: torch.Tensor
    """``(C, D)``"""

    @classmethod
    def load(cls, path: Path = WHITENING_FILE) -> Whitening:
        """Read a safetensors file (tensors only: it cannot run code)."""
        if not path.is_file():
            raise ModelNotFoundError(
                f"the copy-detection whitening {path} is missing: reinstall the package, or write it with "
                "python benchmarks/copy_whitening.py"
            )
        tensors = load_file(path)
        return cls(tensors["mean"].float(), tensors["projection"].float())

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def to(self, device: torch.device) -> Whitening:
        return Whitening(self.mean.to(device), self.projection.to(device))

    def __call__(self, descriptors: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` float32 -> ``(N, D)`` l2-normalised."""
        return F.normalize((descriptors - self.mean) @ self.projection, dim=1)


def gem(features: torch.Tensor, p: float) -> torch.Tensor:
    """Generalised-mean pooling of ``(N, C, H, W)`` non-negative features into ``(N, C)`` (Radenović et al. 2018)."""
    return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def pooled_descriptor(
    features: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, readout: CopyReadout
) -> torch.Tensor:
    """The sum of the l2-normalised GeM descriptors of every scale (and mirror) of the batch: ``(N, C)`` float32.

    ``features`` maps ``(N, 3, H, W)`` to the backbone's last feature map ``(N, C, h, w)``.
    """
    total: torch.Tensor | None = None
    for scale in readout.scales:
        scaled = pixel_values
        if scale != 1.0:
            size = (round(pixel_values.shape[2] * scale), round(pixel_values.shape[3] * scale))
            scaled = F.interpolate(pixel_values, size=size, mode="bilinear", antialias=True)
        views = (scaled, scaled.flip(3)) if readout.mirror else (scaled,)
        for view in views:
            descriptor = F.normalize(gem(features(view).float(), readout.gem_p), dim=1)
            total = descriptor if total is None else total + descriptor
    assert total is not None, "a CopyReadout has at least one scale"
    return F.normalize(total, dim=1)


def copy_forward(
    features: Callable[[torch.Tensor], torch.Tensor],
    whitening: Whitening | None,
    readout: CopyReadout = CopyReadout(),
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `Network` forward: ``(N, 3, H, W)`` in, ``(N, D)`` l2-normalised copy descriptors out (float32; without
    ``whitening``, the raw pooled descriptor that ``benchmarks/copy_whitening.py`` learns the whitening from)."""
    placed: dict[torch.device, Whitening] = {}

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        descriptors = pooled_descriptor(features, pixel_values, readout)
        if whitening is None:
            return descriptors
        if descriptors.device not in placed:
            placed[descriptors.device] = whitening.to(descriptors.device)
        return placed[descriptors.device](descriptors)

    return forward
