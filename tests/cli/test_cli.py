"""The command line: embed a folder into every format, compare, index and search, on real photos."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import encode_image
from helpers import run_cli as run
from PIL import Image

from clip_image_encoder.encoding.outputs import cosine_similarity

GOOD = sorted(["astronaut.jpg", "cats/chelsea.png", "coffee.jpg", "rocket.jpg", "china.jpg", "flower.jpg"])


def embed(folder: Path, out: Path, fmt: str, model: Path, *extra: str) -> int:
    return run("embed", folder, "--out", out, "--format", fmt, "--model", model, "--quiet", *extra)


def read_back(out: Path, fmt: str) -> tuple[list[str], np.ndarray]:
    """Each format read with the library its users would use."""
    if fmt in ("csv", "lightly_csv"):
        with out.open(newline="") as handle:
            rows = list(csv.reader(handle))
        header, body = rows[0], rows[1:]
        if fmt == "lightly_csv":
            assert header[0] == "filenames" and header[-1] == "labels"
            assert {row[-1] for row in body} == {"0"}
            body = [row[:-1] for row in body]
        else:
            assert header[0] == "filename"
        assert header[1] == "embedding_0"
        return [row[0] for row in body], np.array([row[1:] for row in body], dtype=np.float32)
    if fmt == "torch":
        content = torch.load(out, weights_only=True)
        return content["filenames"], content["embeddings"].numpy()
    if fmt == "npy":
        return json.loads(out.with_name("out.filenames.json").read_text()), np.load(out)
    table = pq.read_table(out)
    return table.column("filename").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["csv", "lightly_csv", "torch", "npy", "parquet"])
def test_embed_writes_every_image_in_the_format_users_read(tiny_model_dir, photo_folder, tmp_path, fmt, capsys):
    out = tmp_path / ("out.npy" if fmt == "npy" else f"out.{fmt}")
    assert embed(photo_folder, out, fmt, tiny_model_dir) == 0
    filenames, embeddings = read_back(out, fmt)
    assert sorted(filenames) == GOOD
    assert embeddings.shape == (len(GOOD), 16) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    assert "embedded 6 images" in capsys.readouterr().out


def test_all_formats_hold_the_same_numbers(tiny_model_dir, photo_folder, tmp_path):
    tables = {}
    for fmt in ("csv", "torch", "parquet"):
        out = tmp_path / f"out.{fmt}"
        embed(photo_folder, out, fmt, tiny_model_dir)
        names, vectors = read_back(out, fmt)
        tables[fmt] = dict(zip(names, vectors, strict=True))
    for name in GOOD:
        np.testing.assert_array_equal(tables["csv"][name], tables["torch"][name])
        np.testing.assert_array_equal(tables["parquet"][name], tables["torch"][name])


def test_broken_files_are_reported_not_fatal(tiny_model_dir, photo_folder, tmp_path):
    out = tmp_path / "out.csv"
    assert embed(photo_folder, out, "csv", tiny_model_dir) == 0
    with (tmp_path / "out.csv.errors.csv").open(newline="") as handle:
        report = {row["filename"]: row["error"] for row in csv.DictReader(handle)}
    assert set(report) == {"notes.txt", "broken.jpg"}
    assert all("not a decodable image" in error for error in report.values())


def test_existing_output_is_kept_unless_overwrite(tiny_model_dir, photo_folder, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious")
    assert embed(photo_folder, out, "csv", tiny_model_dir) == 2
    assert out.read_text() == "precious"
    assert embed(photo_folder, out, "csv", tiny_model_dir, "--overwrite") == 0
    assert sorted(read_back(out, "csv")[0]) == GOOD


@pytest.mark.parametrize("fmt", ["csv", "torch", "npy", "parquet"])
def test_resume_embeds_only_the_missing_files(tiny_model_dir, photo_folder, tmp_path, photos, fmt, capsys):
    out = tmp_path / ("out.npy" if fmt == "npy" else f"out.{fmt}")
    embed(photo_folder, out, fmt, tiny_model_dir)
    before = dict(zip(*read_back(out, fmt), strict=True))
    (photo_folder / "new.png").write_bytes(encode_image(Image.fromarray(photos["rocket"][::2, ::2]), "PNG"))
    capsys.readouterr()
    assert embed(photo_folder, out, fmt, tiny_model_dir, "--resume") == 0
    assert "embedded 1 images" in capsys.readouterr().out
    after = dict(zip(*read_back(out, fmt), strict=True))
    assert sorted(after) == sorted([*GOOD, "new.png"])
    for name, vector in before.items():
        np.testing.assert_array_equal(after[name], vector)


def test_normalize_flag_writes_unit_vectors(tiny_model_dir, photo_folder, tmp_path):
    out = tmp_path / "out.torch"
    embed(photo_folder, out, "torch", tiny_model_dir, "--normalize")
    np.testing.assert_allclose(np.linalg.norm(read_back(out, "torch")[1], axis=1), 1, atol=1e-5)


def test_similarity_of_an_image_with_itself_is_one(tiny_model_dir, photo_folder, capsys):
    a = photo_folder / "astronaut.jpg"
    assert run("similarity", a, a, "--model", tiny_model_dir) == 0
    assert float(capsys.readouterr().out) == pytest.approx(1, abs=1e-5)
    assert run("similarity", a, photo_folder / "coffee.jpg", "--model", tiny_model_dir) == 0
    assert float(capsys.readouterr().out) < 0.999


def test_similarity_of_a_broken_file_is_a_clear_error(tiny_model_dir, photo_folder, capsys):
    assert run("similarity", photo_folder / "notes.txt", photo_folder / "coffee.jpg", "--model", tiny_model_dir) == 2
    assert "notes.txt: not a decodable image" in capsys.readouterr().err


def test_cosine_similarity_refuses_mismatched_sizes_and_zero_vectors():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="sizes 2 and 3"):
        cosine_similarity(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="zero vector"):
        cosine_similarity(np.zeros(4), np.ones(4))


def edited_copies(photo: np.ndarray, folder: Path) -> list[Path]:
    """A crop, a resize and a low-quality JPEG re-encode of one photo."""
    image = Image.fromarray(photo)
    width, height = image.size
    crop, resized, reencoded = folder / "crop.png", folder / "resized.png", folder / "reencoded.jpg"
    image.crop((width // 10, height // 10, width - width // 10, height - height // 10)).save(crop)
    image.resize((width // 2, height // 2)).save(resized)
    image.save(reencoded, quality=30)
    return [crop, resized, reencoded]


def test_search_finds_the_original_of_an_edited_copy_first(tiny_model_dir, photo_folder, tmp_path, photos, capsys):
    db = tmp_path / "db"
    assert run("index", photo_folder, "--db", db, "--model", tiny_model_dir) == 0
    queries = tmp_path / "queries"
    queries.mkdir()
    for query in edited_copies(photos["astronaut"], queries):
        capsys.readouterr()
        assert run("search", query, "--db", db, "-k", "3", "--model", tiny_model_dir) == 0
        ranked = capsys.readouterr().out.splitlines()
        assert len(ranked) == 3
        assert ranked[0].endswith("astronaut.jpg"), (query.name, ranked)


def test_reindexing_a_folder_does_not_duplicate_entries(tiny_model_dir, photo_folder, tmp_path, capsys):
    db = tmp_path / "db"
    run("index", photo_folder, "--db", db, "--model", tiny_model_dir)
    run("index", photo_folder, "--db", db, "--model", tiny_model_dir)
    assert f"6 in {db}" in capsys.readouterr().out.splitlines()[-1]
    run("search", photo_folder / "coffee.jpg", "--db", db, "-k", "50", "--model", tiny_model_dir)
    ranked = capsys.readouterr().out.splitlines()
    assert len(ranked) == 6 and len({line.split()[-1] for line in ranked}) == 6


def test_search_with_another_model_is_refused(tiny_model_dir, photo_folder, tmp_path, capsys):
    db = tmp_path / "db"
    run("index", photo_folder, "--db", db, "--model", tiny_model_dir)
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)
    capsys.readouterr()
    assert run("search", photo_folder / "coffee.jpg", "--db", db, "--model", other_model) == 2
    error = capsys.readouterr().err
    assert f"holds embeddings of model {str(tiny_model_dir)!r}" in error
    assert f"come from {str(other_model)!r}" in error
    assert run("index", photo_folder, "--db", db, "--model", other_model) == 2  # nor adds to it


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU: --device cuda is no mistake there")
def test_device_cuda_without_a_gpu_is_a_message_not_a_traceback(tiny_model_dir, photo_folder, tmp_path, capsys):
    status = run("embed", photo_folder, "--out", tmp_path / "e.csv", "--model", tiny_model_dir, "--device", "cuda")
    error = capsys.readouterr().err
    assert status == 2
    assert "error: option device 'cuda': torch sees no cuda GPU here" in error
    assert "Traceback" not in error


def test_int8_with_the_onnx_backend_is_a_message_not_a_traceback(tiny_model_dir, photo_folder, capsys):
    a, b = sorted(photo_folder.glob("*.jpg"))[:2]
    status = run("similarity", a, b, "--model", tiny_model_dir, "--dtype", "int8", "--backend", "onnx")
    error = capsys.readouterr().err
    assert status == 2
    assert "error: option dtype int8 quantises a torch backbone; backend onnx cannot take it" in error


def test_a_missing_extra_names_the_extra_to_install(tiny_model_dir, photo_folder, tmp_path, capsys, monkeypatch):
    """The serving image has no pyarrow: ``--format parquet`` says which extra brings it."""
    import builtins

    real_import = builtins.__import__

    def without_pyarrow(name, *args, **kwargs):
        if name.split(".")[0] == "pyarrow":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_pyarrow)
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    monkeypatch.delitem(sys.modules, "pyarrow.parquet", raising=False)
    out = tmp_path / "e.parquet"
    status = run("embed", photo_folder, "--out", out, "--format", "parquet", "--model", tiny_model_dir)
    assert status == 2
    assert "pip install 'clip-image-encoder[parquet]'" in capsys.readouterr().err
