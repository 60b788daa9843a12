"""Inputs a public service must refuse: server files outside the allowed folders, private addresses, non-images."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOPBACK_ALLOWED, embed, encode_image, serving_folder
from PIL import Image

from clip_image_encoder.errors import ImageInputError, UriRefusedError
from clip_image_encoder.images.uris import DecodeLimits, load_image
from clip_image_encoder.service.documents import ImageDocument

REFUSED_LOCAL = "outside the folders this server reads"


@pytest.fixture
def allowed_folder(tmp_path: Path, photos) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    Image.fromarray(photos["coffee"]).save(folder / "coffee.png")
    return folder


def test_a_file_under_an_allowed_folder_is_read(allowed_folder, photos):
    photos_shape = photos["coffee"].shape
    limits = DecodeLimits(local_uri_roots=(allowed_folder,))
    for uri in (str(allowed_folder / "coffee.png"), (allowed_folder / "coffee.png").as_uri()):
        assert np.asarray(load_image(uri, limits)).shape == photos_shape


@pytest.mark.parametrize("name", ["/etc/passwd", "/etc/no-such-file", "/proc/self/environ"])
def test_files_outside_are_refused_alike_whether_or_not_they_exist(allowed_folder, name):
    limits = DecodeLimits(local_uri_roots=(allowed_folder,))
    for uri in (name, Path(name).as_uri()):
        with pytest.raises(UriRefusedError) as refused:
            load_image(uri, limits)
        assert REFUSED_LOCAL in str(refused.value) and "no such file" not in str(refused.value)


def test_dot_dot_cannot_leave_an_allowed_folder(allowed_folder):
    (allowed_folder.parent / "secret.png").write_bytes((allowed_folder / "coffee.png").read_bytes())
    with pytest.raises(UriRefusedError, match=REFUSED_LOCAL):
        load_image(str(allowed_folder / ".." / "secret.png"), DecodeLimits(local_uri_roots=(allowed_folder,)))


def test_a_symlink_cannot_leave_an_allowed_folder(allowed_folder):
    outside = allowed_folder.parent / "outside.png"
    outside.write_bytes((allowed_folder / "coffee.png").read_bytes())
    os.symlink(outside, allowed_folder / "link.png")
    with pytest.raises(UriRefusedError, match=REFUSED_LOCAL):
        load_image(str(allowed_folder / "link.png"), DecodeLimits(local_uri_roots=(allowed_folder,)))


def test_no_allowed_folder_means_no_local_file():
    with pytest.raises(UriRefusedError, match=REFUSED_LOCAL):
        load_image("/etc/hostname", DecodeLimits())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_is_refused_by_default(host):
    """Refused after resolution, before any connection: no server needs to exist at these addresses."""
    with pytest.raises(UriRefusedError, match="not a public address"):
        load_image(f"http://{host}:9/cat.png", DecodeLimits(allow_remote_uris=True))


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "224.0.0.1", "0.0.0.0"]
)
def test_private_link_local_multicast_and_reserved_addresses_are_refused(address):
    with pytest.raises(UriRefusedError, match="not a public address"):
        load_image(f"http://{address}/latest/meta-data/", DecodeLimits(allow_remote_uris=True))


def test_an_allowed_network_is_fetched(tmp_path, photos):
    Image.fromarray(photos["rocket"]).save(tmp_path / "rocket.png")
    with serving_folder(tmp_path) as base_url:
        np.testing.assert_array_equal(
            np.asarray(load_image(f"{base_url}/rocket.png", LOOPBACK_ALLOWED)), photos["rocket"]
        )


def test_a_redirect_to_a_refused_address_is_refused(tmp_path, photos):
    Image.fromarray(photos["rocket"]).save(tmp_path / "rocket.png")
    with serving_folder(tmp_path) as base_url:
        followed = load_image(f"{base_url}/redirect?to=/rocket.png", LOOPBACK_ALLOWED)
        assert followed.size == (photos["rocket"].shape[1], photos["rocket"].shape[0])
        with pytest.raises(UriRefusedError, match=r"169\.254\.169\.254, which is not a public address"):
            load_image(f"{base_url}/redirect?to=http://169.254.169.254/latest/", LOOPBACK_ALLOWED)


def test_redirect_loops_end(tmp_path):
    with serving_folder(tmp_path) as base_url, pytest.raises(ImageInputError, match="redirects more than 3 times"):
        load_image(f"{base_url}/redirect?to=/redirect%3Fto%3D/redirect", LOOPBACK_ALLOWED)


def test_content_that_is_not_an_image_is_refused(tmp_path):
    (tmp_path / "page.html").write_text("<html>not an image</html>")
    with serving_folder(tmp_path) as base_url, pytest.raises(UriRefusedError, match="'text/html', not an image"):
        load_image(f"{base_url}/page.html", LOOPBACK_ALLOWED)


def test_a_declared_length_over_the_cap_is_refused_before_reading(tmp_path, photos):
    Image.fromarray(photos["rocket"]).save(tmp_path / "rocket.png")
    with serving_folder(tmp_path) as base_url, pytest.raises(ImageInputError, match="max_remote_bytes=1000"):
        load_image(f"{base_url}/rocket.png", dataclasses.replace(LOOPBACK_ALLOWED, max_remote_bytes=1000))


def test_the_executor_refuses_per_document_and_embeds_the_rest(executor, photos, tmp_path):
    png = encode_image(Image.fromarray(photos["chelsea"]), "PNG")
    docs = embed(
        executor,
        [
            ImageDocument(url="/etc/passwd"),
            ImageDocument(bytes_=png),
            ImageDocument(url="file:///etc/shadow"),
            ImageDocument(url="http://127.0.0.1:9/x.png"),
        ],
    )
    assert REFUSED_LOCAL in docs[0].error and REFUSED_LOCAL in docs[2].error
    assert "remote fetching is disabled" in docs[3].error
    assert docs[1].error is None and docs[1].embedding is not None
