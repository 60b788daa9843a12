"""What a client sends, turned into an image: encoded bytes, a decoded array, or a uri to read.

The limits of what the service agrees to read live here (`DecodeLimits`); reading a uri
(local path, ``file://``, ``data:``, ``http(s)://``) is the only place that touches files or
the network on a client's behalf.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clip_image_encoder.decoding import decode_bytes, image_from_array
from clip_image_encoder.errors import (
    ImageInputError,
    ImageTooLargeError,
    NoImageError,
    UriRefusedError,
    UriUnreadableError,
)
from clip_image_encoder.options import EncoderOptions

ImageSource = bytes | str | np.ndarray
"""Encoded image bytes, a uri (local path, ``file://``, ``data:``, ``http(s)://``) or an array."""

_REMOTE_SCHEMES = {"http", "https"}


@dataclass(frozen=True)
class DecodeLimits:
    """What the service agrees to read and decode, so that one input cannot exhaust it."""

    max_image_pixels: int = EncoderOptions.max_image_pixels
    """Images whose header declares more pixels are refused before decoding (decompression bombs)."""
    allow_remote_uris: bool = EncoderOptions.allow_remote_uris
    """Fetch ``http(s)://`` uris. Off by default: a client must not make the server reach the network."""
    remote_timeout_s: float = 10.0
    """Connect and read timeout of one remote fetch, in seconds."""
    max_remote_bytes: int = 32 * 2**20
    """Largest remote body that is read, in bytes."""

    @classmethod
    def from_options(cls, options: EncoderOptions) -> DecodeLimits:
        return cls(max_image_pixels=options.max_image_pixels, allow_remote_uris=options.allow_remote_uris)


def load_image(source: ImageSource | None, limits: DecodeLimits, draft_size: int | None = None) -> Image.Image:
    """Decode any supported source into an RGB image, EXIF orientation applied (``draft_size``: see `decode_bytes`)."""
    if source is None:
        raise NoImageError("no image: set one of tensor, bytes_ or url")
    if isinstance(source, np.ndarray):
        return image_from_array(source, limits.max_image_pixels)
    if isinstance(source, str):
        source = read_uri(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), limits.max_image_pixels, draft_size)
    raise ImageInputError(f"unsupported image source of type {type(source).__name__}")


def read_uri(uri: str, limits: DecodeLimits) -> bytes:
    """Read the bytes behind a local path, ``file://``, ``data:`` or (if allowed) ``http(s)://`` uri."""
    if not uri:
        raise NoImageError("empty uri")
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme == "data":
        return _read_data_uri(uri)
    if scheme in _REMOTE_SCHEMES:
        return _read_remote(uri, limits)
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise UriRefusedError(f"uri {uri!r} has unsupported scheme {scheme!r}")
    else:
        path = Path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UriUnreadableError(f"uri {uri!r}: no such file") from None
    except OSError as exc:
        raise UriUnreadableError(f"uri {uri!r} cannot be read ({exc.strerror or exc})") from None


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
        raise UriRefusedError(
            f"uri {uri!r} is remote and remote fetching is disabled "
            "(start the encoder with allow_remote_uris=True to enable it)"
        )
    try:
        with urllib.request.urlopen(uri, timeout=limits.remote_timeout_s) as response:
            body = response.read(limits.max_remote_bytes + 1)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise UriUnreadableError(f"uri {uri!r} could not be fetched ({exc})") from None
    if len(body) > limits.max_remote_bytes:
        raise ImageTooLargeError(f"uri {uri!r} is larger than max_remote_bytes={limits.max_remote_bytes}")
    return body
