"""Exported models: write a backbone as ONNX or TorchScript, and serve such a folder as a backend.

An export is a folder that the Executor loads like any model folder (``backend: onnx`` or
``backend: torchscript``):

    model.onnx | model.pt         the network: (N, 3, H, W) float32 -> (N, D) float32, dynamic N
    preprocessor_config.json      its preprocessing, in Hugging Face keys
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from clip_image_encoder.errors import ModelNotFoundError
from clip_image_encoder.model import EmbeddingModel, Network
from clip_image_encoder.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
"""The network's file in an export folder, by format (= backend name)."""
INPUT_NAME, OUTPUT_NAME = "pixel_values", "embeddings"


class _Embedder(torch.nn.Module):
    """The backbone with its embedding read-out, as one module with one tensor in and one out."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.backbone = model.module
        self._forward = model.forward

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._forward(pixel_values)


def export_model(model: EmbeddingModel, fmt: str, out: Path) -> Path:
    """Write ``out/model.onnx`` (or ``model.pt``) and ``out/preprocessor_config.json``; return the model file."""
    if fmt not in EXPORT_FILES:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FILES)}, got {fmt!r}")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("export a float32 model loaded on cpu (device='cpu', dtype='float32')")
    out.mkdir(parents=True, exist_ok=True)
    target = out / EXPORT_FILES[fmt]
    height, width = model.preprocess.output_size
    example = torch.zeros(2, 3, height, width)
    embedder = _Embedder(model).eval()
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(
                embedder,
                (example,),
                str(target),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                dynamo=True,
            )
        else:
            torch.jit.trace(embedder, example).save(str(target))
    (out / "preprocessor_config.json").write_text(json.dumps(model.preprocess.to_dict(), indent=2))
    return target


def _export_file(folder: str, fmt: str) -> Path:
    path = Path(folder).expanduser() / EXPORT_FILES[fmt]
    if not path.is_file():
        raise ModelNotFoundError(
            f"backend {fmt} needs a folder made by 'clip-image-encoder export --format {fmt}'; {path} does not exist"
        )
    return path


def load_torchscript(folder: str) -> Network:
    """A TorchScript export as a network on the cpu; `load_model` places it like any torch module."""
    path = _export_file(folder, "torchscript")
    module = torch.jit.load(str(path), map_location="cpu")
    preprocess = PreprocessConfig.from_pretrained(str(path.parent))
    with torch.inference_mode():  # the archive does not record D: one tiny forward tells it
        embedding_dim = int(module(torch.zeros(1, 3, *preprocess.output_size)).shape[-1])
    return Network(module, module, embedding_dim, preprocess)


def load_onnx(folder: str, device: torch.device) -> EmbeddingModel:
    """Serve an ONNX export with onnxruntime: the CUDA provider on cuda when installed, else the cpu.

    The session does its own device placement, so the model's inputs stay float32 on the cpu.
    """
    import onnxruntime

    path = _export_file(folder, "onnx")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running on cpu")
    session = onnxruntime.InferenceSession(str(path), providers=providers)

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        inputs = pixel_values.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])

    network = Network(
        torch.nn.Identity(),
        forward,
        int(session.get_outputs()[0].shape[-1]),
        PreprocessConfig.from_pretrained(str(path.parent)),
    )
    return EmbeddingModel(network, torch.device("cpu"), torch.float32)
