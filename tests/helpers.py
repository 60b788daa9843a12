"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import ipaddress
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
from docarray import DocList
from PIL import Image, ImageDraw, ImageFont

from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

LOOPBACK_ALLOWED = DecodeLimits(allow_remote_uris=True, allowed_remote_networks=(ipaddress.ip_network("127.0.0.0/8"),))
"""Remote fetching on, with loopback allowed: what the tests' local servers need."""


def embed(executor: CLIPImageEncoder, docs: list[ImageDocument], **parameters) -> DocList[ImageDocument]:
    """One request to an in-process Executor, as Jina would make it."""
    return asyncio.run(executor.encode(docs=DocList[ImageDocument](docs), parameters=parameters))


def run_cli(*args: object) -> int:
    """The command line, in this process: its exit status (output goes to capsys)."""
    from clip_image_encoder.cli.main import main

    return main([str(arg) for arg in args])


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


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, and ``/redirect?to=URL`` as a 302 to URL (to itself without ``to``); a client that hangs up
    early is not an error."""

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", urllib.parse.parse_qs(parts.query).get("to", ["/redirect"])[0])
            self.end_headers()
            return
        super().do_GET()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):
            super().handle()

    def log_message(self, format: str, *args) -> None:
        pass


@contextlib.contextmanager
def serving_folder(folder: Path) -> Iterator[str]:
    """A static file server on loopback, the only place a remote fetch test may reach; yields its base url."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFileHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def heavy_copy(photo: np.ndarray) -> bytes:
    """The copies the search read-out misses most (benchmarks/DUPLICATES.md): a 60% crop with a caption, as JPEG."""
    image = Image.fromarray(photo)
    width, height = image.size
    image = image.crop((width // 10, height // 4, width * 7 // 10, height * 17 // 20))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, image.height // 8))
    draw.text((image.width // 10, image.height // 3), "breaking news", font=font, fill=(255, 255, 0))
    return encode_image(image, "JPEG", quality=50)
