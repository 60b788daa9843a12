"""Turn what a client sends (encoded bytes, a uri, a decoded array) into an RGB PIL image.

Everything that can go wrong with one input is raised here as `ImageInputError`, whose
message is written for the client: the callers attach it to that input alone and carry on.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ImageSource = bytes | str | np.ndarray
"""Encoded image bytes, a uri (local path, ``file://``, ``data:``, ``http(s)://``) or an array."""

_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_REMOTE_SCHEMES = {"http", "https"}


class ImageInputError(ValueError):
    """One input cannot become an image; the message says what was wrong with it."""


@dataclass(frozen=True)
class DecodeLimits:
    """What the service agrees to read and decode, so that one input cannot exhaust it."""

    max_image_pixels: int = 64_000_000
    """Images whose header declares more pixels are refused before decoding (decompression bombs)."""
    allow_remote_uris: bool = False
    """Fetch ``http(s)://`` uris. Off by default: a client must not make the server reach the network."""
    remote_timeout_s: float = 10.0
    """Connect and read timeout of one remote fetch, in seconds."""
    max_remote_bytes: int = 32 * 2**20
    """Largest remote body that is read, in bytes."""


def load_image(source: ImageSource | None, limits: DecodeLimits, draft_size: int | None = None) -> Image.Image:
    """Decode any supported source into an RGB image, EXIF orientation applied.

    ``draft_size`` lets JPEG decoding scale down in the DCT domain (Pillow ``draft``) to no
    less than ``draft_size`` pixels on each side: much cheaper for large photos, but not
    bit-identical to a full decode, so only the fast preprocessing mode passes it.
    """
    if source is None:
        raise ImageInputError("no image: set one of tensor, bytes_ or url")
    if isinstance(source, np.ndarray):
        return image_from_array(source, limits)
    if isinstance(source, str):
        source = read_uri(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), limits, draft_size)
    raise ImageInputError(f"unsupported image source of type {type(source).__name__}")


def read_uri(uri: str, limits: DecodeLimits) -> bytes:
    """Read the bytes behind a local path, ``file://``, ``data:`` or (if allowed) ``http(s)://`` uri."""
    if not uri:
        raise ImageInputError("empty uri")
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme == "data":
        return _read_data_uri(uri)
    if scheme in _REMOTE_SCHEMES:
        return _read_remote(uri, limits)
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ImageInputError(f"uri {uri!r} has unsupported scheme {scheme!r}")
    else:
        path = Path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageInputError(f"uri {uri!r}: no such file") from None
    except OSError as exc:
        raise ImageInputError(f"uri {uri!r} cannot be read ({exc.strerror or exc})") from None


def _read_data_uri(uri: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise ImageInputError("data uri has no ',' before its payload")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return urllib.parse.unquote_to_bytes(payload)
    except ValueError as exc:
        raise ImageInputError(f"data uri payload is not valid base64 ({exc})") from None


def _read_remote(uri: str, limits: DecodeLimits) -> bytes:
    if not limits.allow_remote_uris:
        raise ImageInputError(
            f"uri {uri!r} is remote and remote fetching is disabled "
            "(start the encoder with allow_remote_uris=True to enable it)"
        )
    try:
        with urllib.request.urlopen(uri, timeout=limits.remote_timeout_s) as response:
            body = response.read(limits.max_remote_bytes + 1)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise ImageInputError(f"uri {uri!r} could not be fetched ({exc})") from None
    if len(body) > limits.max_remote_bytes:
        raise ImageInputError(f"uri {uri!r} is larger than max_remote_bytes={limits.max_remote_bytes}")
    return body


def decode_bytes(data: bytes, limits: DecodeLimits, draft_size: int | None = None) -> Image.Image:
    """Decode encoded image bytes, refusing oversized images before any pixel is decoded."""
    if not data:
        raise ImageInputError("image bytes are empty")
    try:
        with warnings.catch_warnings():
            # Our own max_image_pixels replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data))
            _check_pixel_count(image.width, image.height, limits)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"image is too large to decode ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageInputError("not a decodable image (unknown or unsupported image format)") from None
    except Exception as exc:  # Pillow raises many types for broken files; all mean the same here
        raise ImageInputError(f"not a decodable image ({exc})") from None
    return to_rgb(ImageOps.exif_transpose(image))


def image_from_array(array: np.ndarray, limits: DecodeLimits) -> Image.Image:
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
    _check_pixel_count(width, height, limits)
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


def _check_pixel_count(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageInputError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise ImageInputError(f"image of {width}x{height} pixels exceeds max_image_pixels={limits.max_image_pixels}")
