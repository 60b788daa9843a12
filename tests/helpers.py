"""Small helpers the tests share."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image


def encode_image(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def png_declaring_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to declare width x height (a decompression bomb)."""
    png = bytearray(encode_image(Image.new("RGB", (1, 1)), "PNG"))
    ihdr_data = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr_data
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data))
    return bytes(png)


def exif_rotated_png(image: Image.Image) -> bytes:
    """PNG whose stored pixels are rotated, with EXIF orientation 6 telling viewers to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode_image(image.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
