"""Image codecs: encoded bytes or a decoded array in, an RGB Pillow image (EXIF orientation applied) out.

Each function refuses an image that declares more than ``max_pixels`` pixels before any pixel is
decoded, and raises an `ImageInputError` subclass whose message is written for the client.
"""

from __future__ import annotations

import warnings
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps

from clip_image_encoder.errors import ImageInputError, ImageTooLargeError, UndecodableImageError

_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def decode_bytes(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an encoded image file.

    ``draft_size`` lets JPEG decoding scale down in the DCT domain (Pillow ``draft``) to no less
    than ``draft_size`` pixels on each side: much cheaper for large photos, but not bit-identical
    to a full decode, so only the fast preprocessing mode passes it.
    """
    if not data:
        raise UndecodableImageError("image bytes are empty")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data))
            _check_pixel_count(image.width, image.height, max_pixels)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode ({exc})") from None
    except Image.UnidentifiedImageError:
        raise UndecodableImageError("not a decodable image (unknown or unsupported image format)") from None
    except Exception as exc:  # Pillow raises many types for broken files; all mean the same here
        raise UndecodableImageError(f"not a decodable image ({exc})") from None
    return to_rgb(ImageOps.exif_transpose(image))


def image_from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """Wrap a decoded ``(H, W)``, ``(H, W, 1|3|4)`` array of 0..255 integers as an RGB image."""
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        # JSON (Jina's HTTP protocol) carries pixels as int64: accept any integers that are bytes.
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageInputError(f"tensor of dtype {array.dtype} has values outside the 0..255 of pixels")
        array = array.astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"tensor of dtype {array.dtype} is not an image: expected uint8 (H, W, 3) pixels, "
            "or a float32 (3, H, W) preprocessed model input"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageInputError(
            f"tensor of shape {tuple(array.shape)} is not an image: expected (H, W), (H, W, 3) or (H, W, 4) uint8"
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageInputError(f"tensor of shape {tuple(array.shape)} is an empty image")
    _check_pixel_count(width, height, max_pixels)
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way the Hugging Face reference does.

    Transparency is composited onto white; 16-bit greys are scaled to 8 bits (Pillow's own
    conversion would clip them to white).
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UndecodableImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} pixels exceeds max_image_pixels={max_pixels}")
