"""Export to ONNX and TorchScript, and the onnx backend: parity with torch on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cosine, embed
from PIL import Image

from clip_image_encoder.cli.main import main
from clip_image_encoder.images.preprocessing import Preprocessor
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder


@pytest.fixture(scope="module")
def onnx_folder(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-export")
    assert main(["export", "--format", "onnx", "--out", str(folder), "--model", str(tiny_model_dir)]) == 0
    return folder


def embed_photos(executor: CLIPImageEncoder, photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    docs = [ImageDocument(tensor=photo) for photo in photos.values()]
    return [np.asarray(d.embedding) for d in embed(executor, docs, batch_size=4)]


def test_onnx_backend_matches_torch(executor, onnx_folder, photos):
    onnx = CLIPImageEncoder(pretrained_model_name_or_path=str(onnx_folder), backend="onnx")
    for ours, reference in zip(embed_photos(onnx, photos), embed_photos(executor, photos), strict=True):
        assert cosine(ours, reference) >= 0.9999
    onnx.close()


def test_onnx_folder_carries_its_preprocessing(onnx_folder, executor):
    from clip_image_encoder.images.preprocessing import PreprocessConfig

    assert PreprocessConfig.from_pretrained(str(onnx_folder)) == executor.encoder.model.preprocess


def test_torchscript_export_runs_and_matches(executor, tiny_model_dir, tmp_path, photos):
    assert main(["export", "--format", "torchscript", "--out", str(tmp_path), "--model", str(tiny_model_dir)]) == 0
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    model = executor.encoder.model
    preprocessor = Preprocessor(model.preprocess)
    pixels = preprocessor.batch([preprocessor.image(Image.fromarray(photo)) for photo in photos.values()])
    with torch.inference_mode():
        np.testing.assert_allclose(scripted(pixels).numpy(), model.embed(pixels), atol=1e-5)


def test_onnx_backend_without_an_export_says_how_to_make_one(tmp_path):
    from clip_image_encoder.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="clip-image-encoder export --format onnx"):
        CLIPImageEncoder(pretrained_model_name_or_path=str(tmp_path), backend="onnx")


def test_torchscript_backend_serves_an_export_like_torch(executor, tiny_model_dir, tmp_path, photos):
    assert main(["export", "--format", "torchscript", "--out", str(tmp_path), "--model", str(tiny_model_dir)]) == 0
    scripted = CLIPImageEncoder(pretrained_model_name_or_path=str(tmp_path), backend="torchscript")
    try:
        assert scripted.encoder.model.embedding_dim == 16
        for ours, reference in zip(embed_photos(scripted, photos), embed_photos(executor, photos), strict=True):
            assert cosine(ours, reference) >= 0.9999
    finally:
        scripted.close()


def test_onnx_on_cuda_reports_its_device_and_overlaps_decoding(onnx_folder, photos, monkeypatch):
    """With onnxruntime's CUDA provider (simulated here: no GPU), the model says cuda, in metrics too, and the
    encoder decodes ahead as for torch on cuda, while the session still takes its inputs on the cpu."""
    import onnxruntime

    from clip_image_encoder.service.executors import _model_info

    real_session = onnxruntime.InferenceSession

    class SessionOnCuda(real_session):
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", *super().get_providers()]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", SessionOnCuda)
    onnx = CLIPImageEncoder(pretrained_model_name_or_path=str(onnx_folder), backend="onnx", device="cuda")
    try:
        model = onnx.encoder.model
        assert (model.device.type, model.input_device.type) == ("cuda", "cpu")
        assert onnx.encoder.overlaps
        assert _model_info(onnx.options, onnx.encoder)["device"] == "cuda"
        embedded = embed(onnx, [ImageDocument(tensor=photo) for photo in photos.values()], batch_size=2)
        assert all(doc.error is None and doc.embedding.shape == (16,) for doc in embedded)
    finally:
        onnx.close()
