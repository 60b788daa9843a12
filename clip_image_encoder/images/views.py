"""The client's view of an image: the region of interest and the rotation it asked to embed."""

from __future__ import annotations

from PIL import Image

from clip_image_encoder.errors import ImageInputError

ROTATIONS = (0, 90, 180, 270)
"""The rotations a Document (or the ``rotation`` option) may ask for, in degrees counter-clockwise."""

_TRANSPOSES = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
"""Explicit rotations, in degrees counter-clockwise (as ``numpy.rot90`` and ``Image.rotate``)."""


def select_view(image: Image.Image, roi: tuple[int, int, int, int] | None = None, rotation: int = 0) -> Image.Image:
    """Crop to a region of interest, then rotate: what the client asked to embed of the image.

    ``roi`` is ``(x, y, width, height)`` in pixels of the image as displayed (EXIF orientation
    already applied); ``rotation`` is 0, 90, 180 or 270 degrees counter-clockwise.
    """
    if rotation not in ROTATIONS:
        raise ImageInputError(f"rotation {rotation} is not one of {', '.join(map(str, ROTATIONS))}")
    if roi is not None:
        if len(roi) != 4:
            raise ImageInputError(f"roi {list(roi)} must be [x, y, width, height]")
        x, y, width, height = (int(v) for v in roi)
        if width <= 0 or height <= 0:
            raise ImageInputError(f"roi {list(roi)} is empty: width and height must be positive")
        if x < 0 or y < 0 or x + width > image.width or y + height > image.height:
            raise ImageInputError(
                f"roi {list(roi)} (x, y, width, height) reaches outside the {image.width}x{image.height} image"
            )
        image = image.crop((x, y, x + width, y + height))
    return image if rotation == 0 else image.transpose(_TRANSPOSES[rotation])
