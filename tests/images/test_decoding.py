"""Decoding: every supported source becomes the right RGB image; every bad one a clear error."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOPBACK_ALLOWED, encode_image, exif_rotated_png, png_declaring_size
from PIL import Image

from clip_image_encoder.errors import ImageInputError
from clip_image_encoder.images.uris import DecodeLimits, load_image

LIMITS = DecodeLimits(local_uri_roots=None)
"""Any local file may be read, as the command line reads what it is given (guards: test_input_guards.py)."""


@pytest.fixture(scope="module")
def astronaut(photos) -> Image.Image:
    return Image.fromarray(photos["astronaut"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_png_bytes_decode_to_the_same_pixels(astronaut):
    decoded = load_image(encode_image(astronaut, "PNG"), LIMITS)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(pixels(decoded), pixels(astronaut))


def test_path_file_uri_and_data_uri_read_the_same_bytes(astronaut, tmp_path: Path):
    png = encode_image(astronaut, "PNG")
    path = tmp_path / "astronaut.png"
    path.write_bytes(png)
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    for uri in (str(path), path.as_uri(), data_uri):
        np.testing.assert_array_equal(pixels(load_image(uri, LIMITS)), pixels(astronaut))


def test_exif_orientation_is_applied(astronaut):
    decoded = load_image(exif_rotated_png(astronaut), LIMITS)
    np.testing.assert_array_equal(pixels(decoded), pixels(astronaut))


def test_grey_array_and_grey_png_become_rgb_with_equal_channels(photos):
    grey = photos["astronaut"].mean(axis=2).astype(np.uint8)
    for source in (grey, grey[:, :, None], encode_image(Image.fromarray(grey), "PNG")):
        decoded = pixels(load_image(source, LIMITS))
        assert decoded.shape == (*grey.shape, 3)
        np.testing.assert_array_equal(decoded[:, :, 1], grey)


def test_integer_pixels_of_any_dtype_are_accepted_as_bytes(photos):
    as_int64 = photos["rocket"].astype(np.int64)  # what JSON over HTTP delivers
    np.testing.assert_array_equal(pixels(load_image(as_int64, LIMITS)), photos["rocket"])
    with pytest.raises(ImageInputError, match=r"outside the 0\.\.255"):
        load_image(as_int64 * 300, LIMITS)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (255, 0, 0, 255)  # opaque red top half, fully transparent bottom half
    decoded = pixels(load_image(rgba, LIMITS))
    assert (decoded[:2] == (255, 0, 0)).all()
    assert (decoded[2:] == 255).all()


def test_palette_png_with_transparency_is_composited_like_rgba(astronaut):
    palette = astronaut.convert("P")
    palette.info["transparency"] = 0
    decoded = load_image(encode_image(palette, "PNG", transparency=0), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == astronaut.size


def test_cmyk_jpeg_is_converted_to_rgb(astronaut):
    decoded = load_image(encode_image(astronaut.convert("CMYK"), "JPEG", quality=95), LIMITS)
    assert decoded.mode == "RGB"
    assert np.abs(pixels(decoded).astype(int) - pixels(astronaut)).mean() < 8


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(photos):
    grey8 = photos["coffee"][:, :, 0]
    grey16 = grey8.astype(np.uint16) * 257
    decoded = pixels(load_image(encode_image(Image.fromarray(grey16), "PNG"), LIMITS))
    np.testing.assert_array_equal(decoded[:, :, 0], grey8)


def test_one_pixel_image_decodes():
    decoded = load_image(encode_image(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), LIMITS)
    assert decoded.size == (1, 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n not really", "not a decodable image"),
        (b"hello, I am a text file\n", "not a decodable image"),
        (None, "no image"),
        ("", "empty uri"),
        ("/no/such/photo.jpg", "no such file"),
        ("ftp://example.invalid/a.jpg", "unsupported scheme"),
        ("data:image/png;base64,***", "not valid base64"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty image"),
        (np.zeros((5, 5, 2), dtype=np.uint8), "is not an image"),
        (np.zeros((5, 5, 3), dtype=np.float64), "dtype float64"),
        (np.zeros((2, 5, 5, 3), dtype=np.uint8), "is not an image"),
    ],
    ids=[
        "empty-bytes",
        "corrupt-bytes",
        "text-bytes",
        "no-image",
        "empty-uri",
        "missing-path",
        "unsupported-scheme",
        "bad-data-uri",
        "zero-size-tensor",
        "two-channel-tensor",
        "float-hwc-tensor",
        "4d-tensor",
    ],
)
def test_bad_source_raises_a_clear_error(source, message):
    with pytest.raises(ImageInputError, match=message):
        load_image(source, LIMITS)


def test_truncated_jpeg_is_an_error(astronaut):
    jpeg = encode_image(astronaut, "JPEG")
    with pytest.raises(ImageInputError, match="not a decodable image"):
        load_image(jpeg[: len(jpeg) // 2], LIMITS)


def test_text_file_uri_is_an_error(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ImageInputError, match="not a decodable image"):
        load_image(str(notes), LIMITS)


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_huge_declared_size_is_refused_before_decoding(side):
    with pytest.raises(ImageInputError, match=r"max_image_pixels|too large"):
        load_image(png_declaring_size(side, side), LIMITS)


def test_pixel_limit_applies_to_arrays_too():
    with pytest.raises(ImageInputError, match="max_image_pixels=100"):
        load_image(np.zeros((20, 20, 3), dtype=np.uint8), DecodeLimits(max_image_pixels=100))


def test_remote_uri_is_refused_while_disabled():
    with pytest.raises(ImageInputError, match="remote fetching is disabled"):
        load_image("https://example.com/cat.jpg", LIMITS)


def test_remote_uri_is_fetched_when_enabled(local_http_server, astronaut):
    folder, base_url = local_http_server
    (folder / "a.png").write_bytes(encode_image(astronaut, "PNG"))
    decoded = load_image(f"{base_url}/a.png", LOOPBACK_ALLOWED)
    np.testing.assert_array_equal(pixels(decoded), pixels(astronaut))


def test_remote_body_over_the_size_cap_is_refused(local_http_server, astronaut):
    folder, base_url = local_http_server
    (folder / "a.png").write_bytes(encode_image(astronaut, "PNG"))
    limits = dataclasses.replace(LOOPBACK_ALLOWED, max_remote_bytes=1000)
    with pytest.raises(ImageInputError, match="larger than max_remote_bytes=1000"):
        load_image(f"{base_url}/a.png", limits)


def test_remote_not_found_is_an_error(local_http_server):
    _, base_url = local_http_server
    with pytest.raises(ImageInputError, match="answered HTTP 404"):
        load_image(f"{base_url}/missing.png", LOOPBACK_ALLOWED)
