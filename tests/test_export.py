"""Export to ONNX and TorchScript, and the onnx backend: parity with torch on real photos."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from docarray import DocList
from helpers import cosine

from clip_image_encoder.cli import main
from clip_image_encoder.executor import CLIPImageEncoder, ImageDocument


@pytest.fixture(scope="module")
def onnx_folder(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-export")
    assert main(["export", "--format", "onnx", "--out", str(folder), "--model", str(tiny_model_dir)]) == 0
    return folder


def embed(executor: CLIPImageEncoder, photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    docs = DocList[ImageDocument]([ImageDocument(tensor=photo) for photo in photos.values()])
    return [np.asarray(d.embedding) for d in asyncio.run(executor.encode(docs=docs, parameters={"batch_size": 4}))]


def test_onnx_backend_matches_torch(executor, onnx_folder, photos):
    onnx = CLIPImageEncoder(pretrained_model_name_or_path=str(onnx_folder), backend="onnx")
    for ours, reference in zip(embed(onnx, photos), embed(executor, photos), strict=True):
        assert cosine(ours, reference) >= 0.9999
    onnx.close()


def test_onnx_folder_carries_its_preprocessing(onnx_folder, executor):
    from clip_image_encoder.preprocessing import PreprocessConfig

    assert PreprocessConfig.from_pretrained(str(onnx_folder)) == executor.encoder.model.preprocess


def test_torchscript_export_runs_and_matches(executor, tiny_model_dir, tmp_path, photos):
    assert main(["export", "--format", "torchscript", "--out", str(tmp_path), "--model", str(tiny_model_dir)]) == 0
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    encoder = executor.encoder
    pixels = encoder._assemble([encoder.prepare(photo) for photo in photos.values()])
    with torch.inference_mode():
        np.testing.assert_allclose(scripted(pixels).numpy(), encoder.model.embed(pixels), atol=1e-5)


def test_onnx_backend_without_an_export_says_how_to_make_one(tmp_path):
    from clip_image_encoder.model import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="clip-image-encoder export --format onnx"):
        CLIPImageEncoder(pretrained_model_name_or_path=str(tmp_path), backend="onnx")
