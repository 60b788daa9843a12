"""What a client sends, turned into an image: encoded bytes, a decoded array, or a uri to read.

The limits of what the service agrees to read live here (`DecodeLimits`); reading a uri
(local path, ``file://``, ``data:``, ``http(s)://``) is the only place that touches files or
the network on a client's behalf, so it is guarded as a public service must be:

- a local path is read only under the folders the operator lists, after resolving symlinks and
  ``..``; a refused path gets the same answer whether or not the file exists;
- a remote uri is fetched only when the operator allows it, only from public addresses (or
  networks the operator lists), checked after DNS resolution and again at every redirect, with
  the connection made to the checked address; its size and time are capped and only image
  content is accepted.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clip_image_encoder.errors import (
    ImageInputError,
    ImageTooLargeError,
    NoImageError,
    UriRefusedError,
    UriUnreadableError,
)
from clip_image_encoder.images.decoding import decode_bytes, image_from_array

ImageSource = bytes | str | np.ndarray
"""Encoded image bytes, a uri (local path, ``file://``, ``data:``, ``http(s)://``) or an array."""

_REMOTE_SCHEMES = {"http", "https"}
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class DecodeLimits:
    """What the service agrees to read and decode, so that one input cannot exhaust or misuse it."""

    max_image_pixels: int = 64_000_000
    """Images whose header declares more pixels are refused before decoding (decompression bombs)."""
    local_uri_roots: tuple[Path, ...] | None = ()
    """Folders whose files may be read by path or ``file://``; None: any file (the command line's own use)."""
    allow_remote_uris: bool = False
    """Fetch ``http(s)://`` uris. Off by default: a client must not make the server reach the network."""
    allowed_remote_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Non-public networks that remote uris may reach all the same."""
    remote_timeout_s: float = 10.0
    """Connect and read timeout of one remote fetch, in seconds."""
    max_remote_bytes: int = 32 * 2**20
    """Largest remote body that is read, in bytes."""


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
    return _read_local(uri, path, limits)


def _read_local(uri: str, path: Path, limits: DecodeLimits) -> bytes:
    if limits.local_uri_roots is not None:
        resolved = path.resolve()  # symlinks and .. resolved before the check, so neither can leave a root
        if not any(resolved.is_relative_to(root) for root in limits.local_uri_roots):
            # The same answer whether or not the file exists: a refusal must not reveal the server's files.
            raise UriRefusedError(
                f"uri {uri!r} is a local path outside the folders this server reads (local_uri_roots); "
                "send the image as bytes_, tensor or a data: uri"
            )
        path = resolved
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
    """Fetch with redirects followed by hand, each hop checked, at most `MAX_REDIRECTS` of them."""
    if not limits.allow_remote_uris:
        raise UriRefusedError(
            f"uri {uri!r} is remote and remote fetching is disabled "
            "(start the encoder with allow_remote_uris=True to enable it)"
        )
    target = uri
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(target)
        if parts.scheme.lower() not in _REMOTE_SCHEMES or not parts.hostname:
            raise UriRefusedError(f"uri {uri!r} leads to {target!r}, which is not an http(s) uri")
        address = _checked_address(uri, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), limits)
        try:
            status, location, body = _fetch_once(parts, address, limits)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise UriUnreadableError(f"uri {uri!r} could not be fetched ({exc})") from None
        if status in (301, 302, 303, 307, 308) and location:
            target = urllib.parse.urljoin(target, location)
            continue
        if status != 200:
            raise UriUnreadableError(f"uri {uri!r} answered HTTP {status}")
        return body
    raise UriUnreadableError(f"uri {uri!r} redirects more than {MAX_REDIRECTS} times")


def _checked_address(uri: str, host: str, port: int, limits: DecodeLimits) -> str:
    """The address to connect to: every address the host resolves to must be public or allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UriUnreadableError(f"uri {uri!r}: host {host!r} cannot be resolved ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        allowed = any(address in network for network in limits.allowed_remote_networks)
        if not (address.is_global or allowed) or address.is_multicast:
            raise UriRefusedError(
                f"uri {uri!r}: host {host!r} is at {address}, which is not a public address "
                "(the operator can allow a network with allowed_remote_networks)"
            )
    return str(addresses[0])


def _fetch_once(parts: urllib.parse.SplitResult, address: str, limits: DecodeLimits) -> tuple[int, str | None, bytes]:
    """One GET to the checked address (no second DNS look-up), with the host's name for HTTP and TLS."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection = _PinnedConnection(parts.scheme, parts.hostname, port, address, limits.remote_timeout_s)
    try:
        path = parts.path or "/"
        connection.request("GET", f"{path}?{parts.query}" if parts.query else path, headers={"Accept": "image/*"})
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            return response.status, response.getheader("Location"), b""
        if response.status == 200:
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
                raise UriRefusedError(f"uri {parts.geturl()!r} is {content_type!r}, not an image")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_remote_bytes:
                raise ImageTooLargeError(
                    f"uri {parts.geturl()!r} is larger than max_remote_bytes={limits.max_remote_bytes}"
                )
            body = response.read(limits.max_remote_bytes + 1)
            if len(body) > limits.max_remote_bytes:
                raise ImageTooLargeError(
                    f"uri {parts.geturl()!r} is larger than max_remote_bytes={limits.max_remote_bytes}"
                )
            return 200, None, body
        return response.status, None, b""
    finally:
        connection.close()


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTP(S) connection to an address that was checked, with TLS verified for the uri's host name."""

    def __init__(self, scheme: str, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._tls = scheme == "https"
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        if self._tls:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
