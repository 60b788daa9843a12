"""Shared fixtures: a tiny random CLIP model saved to disk, and real photos from installed packages."""

from __future__ import annotations

import os

# Tests never reach the network or bind beyond loopback; set before jina or transformers import.
os.environ.setdefault("JINA_DEFAULT_HOST", "127.0.0.1")
os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Flows start their Executors in new processes; forking a process whose torch thread pool has run
# (the in-process Executor fixture) can deadlock the child, so spawn instead.
os.environ.setdefault("JINA_MP_START_METHOD", "spawn")

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import encode_image
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from tiny_clip import save_tiny_clip, save_tiny_vision_tower
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT CLIP vision tower in the save_pretrained layout that users' folders have."""
    return save_tiny_vision_tower(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random whole CLIP checkpoint (image and text towers, 16-d) with its tokenizer, as users' folders are."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-full"))


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path):
    """The Hugging Face reference: CLIPImageProcessor (PIL) + CLIPVisionModelWithProjection."""
    processor = CLIPImageProcessorPil.from_pretrained(tiny_model_dir)
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_model_dir).eval()

    def embed(images: list[Image.Image]) -> np.ndarray:
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return model(pixel_values=pixel_values).image_embeds.numpy()

    return embed


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos, (H, W, 3) uint8, of varied sizes and aspect ratios."""
    china, flower = load_sample_images().images
    return {
        "astronaut": skimage_data.astronaut(),
        "chelsea": skimage_data.chelsea(),
        "coffee": skimage_data.coffee(),
        "rocket": skimage_data.rocket(),
        "china": china,
        "flower": flower,
    }


@pytest.fixture(scope="session")
def executor(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Executor on the tiny model, loaded the way users load theirs (a folder path); it may read the
    files of the tests' temporary folders, and no others."""
    from clip_image_encoder.service.executors import CLIPImageEncoder

    encoder = CLIPImageEncoder(
        pretrained_model_name_or_path=str(tiny_model_dir), local_uri_roots=[str(tmp_path_factory.getbasetemp())]
    )
    yield encoder
    encoder.close()


@pytest.fixture(scope="session")
def photo_variants(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    """36 distinct real images: six crops of each photo, enough for a batch of 32 and a remainder."""
    variants = []
    for photo in photos.values():
        height, width = photo.shape[:2]
        for i in range(6):
            top, left = (i * height) // 12, ((5 - i) * width) // 12
            variants.append(np.ascontiguousarray(photo[top : top + height // 2 + i * 10, left:]))
    return variants


@pytest.fixture
def local_http_server(tmp_path: Path):
    """A static file server on loopback serving ``tmp_path``: yields (folder, base url)."""
    from helpers import serving_folder

    with serving_folder(tmp_path) as base_url:
        yield tmp_path, base_url


@pytest.fixture
def photo_folder(tmp_path: Path, photos) -> Path:
    """Real photos in nested folders (JPEG and PNG), plus a text file, a truncated JPEG and a hidden file."""
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    for name, photo in photos.items():
        target = folder / "cats" / f"{name}.png" if name == "chelsea" else folder / f"{name}.jpg"
        target.write_bytes(
            encode_image(Image.fromarray(photo), target.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
        )
    (folder / "notes.txt").write_text("not an image")
    truncated = encode_image(Image.fromarray(photos["coffee"]), "JPEG")
    (folder / "broken.jpg").write_bytes(truncated[: len(truncated) // 2])
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    return folder


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus standalone server (PyPI's ``milvus``) on 127.0.0.1 for the whole session, killed by its pid."""
    from milvus_server import milvus_server

    with milvus_server(tmp_path_factory.mktemp("milvus")) as uri:
        yield uri


_collections = itertools.count()


@pytest.fixture(params=["embedded", "milvus"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store's ``--db`` on each side: a folder, and a fresh collection of the session's Milvus server."""
    if request.param == "embedded":
        return str(tmp_path / "index")
    return f"{request.getfixturevalue('milvus_uri')}/test_{next(_collections)}_{os.getpid()}"
