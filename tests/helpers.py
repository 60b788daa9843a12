"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
import zlib
from io import BytesIO

import numpy as np
from docarray import DocList
from PIL import Image

from clip_image_encoder.documents import ImageDocument
from clip_image_encoder.executor import CLIPImageEncoder


def embed(executor: CLIPImageEncoder, docs: list[ImageDocument], **parameters) -> DocList[ImageDocument]:
    """One request to an in-process Executor, as Jina would make it."""
    return asyncio.run(executor.encode(docs=DocList[ImageDocument](docs), parameters=parameters))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, timeout_s: float = 120) -> None:
    """A bare Executor has no readiness endpoint: wait until its gRPC port accepts connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, "the server exited during start-up"
        assert time.monotonic() < deadline, f"nothing listened on port {port} within {timeout_s} s"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)


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
