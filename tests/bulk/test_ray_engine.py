"""``embed --engine ray``: the same file, embeddings and errors report as the local engine, on real photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import encode_image, exif_rotated_png
from PIL import Image

from clip_image_encoder.bulk.files import read_embeddings
from clip_image_encoder.bulk.ray import list_object_storage
from clip_image_encoder.cli.main import main
from clip_image_encoder.images.listing import list_images
from clip_image_encoder.search.stores import open_store


@pytest.fixture(scope="module")
def ray_cluster():
    """A small local Ray (2 CPUs: one actor, one reader), started once; the engine must leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def photo_folder(photo_folder: Path, photos) -> Path:
    """The shared folder (photos, a PNG in a subfolder, a text file, a truncated JPEG, a hidden file), plus an
    EXIF-rotated PNG: both engines must orient it alike."""
    (photo_folder / "rotated.png").write_bytes(exif_rotated_png(Image.fromarray(photos["astronaut"])))
    return photo_folder


def embed(engine: str, folder: Path, out: Path, model: Path, *extra: str) -> int:
    args = ["embed", folder, "--out", out, "--model", model, "--engine", engine, "--quiet", *extra]
    return main([str(arg) for arg in args])


def both_engines(folder: Path, tmp_path: Path, model: Path, fmt: str, *extra: str) -> tuple[Path, Path]:
    """The folder embedded by each engine into ``local.FMT`` and ``ray.FMT``; both must succeed."""
    local, ray = tmp_path / f"local.{fmt}", tmp_path / f"ray.{fmt}"
    assert embed("local", folder, local, model, "--format", fmt, *extra) == 0
    assert embed("ray", folder, ray, model, "--format", fmt, *extra) == 0
    return local, ray


def test_ray_engine_writes_the_local_engines_filenames_embeddings_and_errors(
    ray_cluster, tiny_model_dir, photo_folder, tmp_path
):
    local, ray = both_engines(photo_folder, tmp_path, tiny_model_dir, "csv")
    expected, got = read_embeddings(local, "csv"), read_embeddings(ray, "csv")
    assert got.filenames == expected.filenames  # same names, same order
    assert len(got.filenames) == 7 and "rotated.png" in got.filenames
    np.testing.assert_allclose(got.embeddings, expected.embeddings, rtol=0, atol=1e-6)
    errors = Path(f"{ray}.errors.csv").read_text()
    assert errors == Path(f"{local}.errors.csv").read_text()
    assert "notes.txt" in errors and "broken.jpg" in errors


def test_ray_engine_applies_the_output_and_rotation_options_as_the_local_engine(
    ray_cluster, tiny_model_dir, photo_folder, tmp_path
):
    options = ("--rotation", "90", "--embed-dim", "8", "--normalize", "--output-dtype", "float16", "--batch-size", "3")
    local, ray = both_engines(photo_folder, tmp_path, tiny_model_dir, "torch", *options)
    expected, got = torch.load(local, weights_only=True), torch.load(ray, weights_only=True)
    assert got["filenames"] == expected["filenames"]
    assert got["embeddings"].shape == (7, 8)
    np.testing.assert_allclose(got["embeddings"].numpy(), expected["embeddings"].numpy(), rtol=0, atol=1e-3)


def test_ray_engine_resumes_a_local_engines_output(ray_cluster, tiny_model_dir, photo_folder, tmp_path, photos, capsys):
    out = tmp_path / "out.csv"
    assert embed("local", photo_folder, out, tiny_model_dir) == 0
    (photo_folder / "new.png").write_bytes(encode_image(Image.fromarray(photos["rocket"][::2, ::2]), "PNG"))
    capsys.readouterr()
    assert embed("ray", photo_folder, out, tiny_model_dir, "--resume") == 0
    assert "embedded 1 images" in capsys.readouterr().out
    assert read_embeddings(out, "csv").filenames[-1] == "new.png"


def test_index_on_ray_writes_the_local_engines_embeddings_into_the_store_and_resumes(
    ray_cluster, tiny_model_dir, photo_folder, photos, tmp_path, store_db, capsys
):
    """``index --engine ray`` into either store: the keys and vectors the local engine writes; ``--resume`` adds
    only the new file."""
    local_db = str(tmp_path / "local-db")
    index = ["index", photo_folder, "--model", tiny_model_dir, "--quiet"]
    assert main([str(arg) for arg in [*index, "--db", local_db]]) == 0
    assert main([str(arg) for arg in [*index, "--db", store_db, "--engine", "ray"]]) == 0
    with open_store(local_db) as local, open_store(store_db) as on_ray:
        keys = sorted(local.keys())
        assert len(keys) == len(on_ray) == 7
        assert on_ray.contains(keys) == set(keys)
        np.testing.assert_allclose(on_ray.vectors(keys), local.vectors(keys), rtol=0, atol=1e-6)

    (photo_folder / "new.png").write_bytes(encode_image(Image.fromarray(photos["rocket"][::2, ::2]), "PNG"))
    capsys.readouterr()
    assert main([str(arg) for arg in [*index, "--db", store_db, "--engine", "ray", "--resume"]]) == 0
    assert f"indexed 1 images from {photo_folder}; 7 already held; 8 in {store_db}" in capsys.readouterr().out
    with open_store(store_db) as on_ray:
        assert len(on_ray) == 8 and on_ray.contains([str(photo_folder.resolve() / "new.png")])


def test_ray_engine_reports_a_model_that_cannot_load_as_the_local_engine_does(
    ray_cluster, photo_folder, tmp_path, capsys
):
    missing = tmp_path / "no-such-model"
    assert embed("local", photo_folder, tmp_path / "local.csv", missing) == 2
    local_error = capsys.readouterr().err
    assert embed("ray", photo_folder, tmp_path / "ray.csv", missing) == 2
    assert capsys.readouterr().err.splitlines()[-1] == local_error.strip() != ""
    assert not (tmp_path / "ray.csv").exists()


def test_object_storage_listing_names_the_files_the_local_listing_names(photo_folder):
    """s3:// and gs:// are listed through pyarrow's file systems: checked here on file://, the one at hand."""
    (photo_folder / "cats-and-dogs.txt").write_text("sorts after cats/ as a path, before it as a string")
    local = [path.relative_to(photo_folder).as_posix() for path in list_images(photo_folder)]
    assert list_object_storage(photo_folder.as_uri()) == local
    assert ".hidden.jpg" not in local and "cats/chelsea.png" in local


def test_ray_engine_without_ray_says_how_to_install_it(tiny_model_dir, photo_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert embed("ray", photo_folder, tmp_path / "out.csv", tiny_model_dir) == 2
    assert "install the ray extra: pip install 'clip-image-encoder[ray]'" in capsys.readouterr().err
