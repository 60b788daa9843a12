"""Export a loaded backbone to ONNX or TorchScript, and serve an exported ONNX folder with onnxruntime.

An export is a folder that the Executor can load like any model folder:

    model.onnx | model.pt         the network: (N, 3, H, W) float32 -> (N, D) float32, dynamic N
    preprocessor_config.json      its preprocessing, in Hugging Face keys
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from clip_image_encoder.model import EmbeddingModel, ModelNotFoundError
from clip_image_encoder.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
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
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("export a float32 model loaded on cpu (device='cpu', dtype='float32')")
    out.mkdir(parents=True, exist_ok=True)
    target = out / EXPORT_FORMATS[fmt]
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


def load_onnx_model(folder: str, device: torch.device) -> EmbeddingModel:
    """Serve an exported folder with onnxruntime: the CUDA provider on cuda when installed, else the cpu."""
    import onnxruntime

    path = Path(folder).expanduser() / EXPORT_FORMATS["onnx"]
    if not path.is_file():
        raise ModelNotFoundError(
            f"backend onnx needs a folder made by 'clip-image-encoder export --format onnx'; {path} does not exist"
        )
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running on cpu")
    session = onnxruntime.InferenceSession(str(path), providers=providers)
    preprocess = PreprocessConfig.from_pretrained(str(path.parent))
    dim = int(session.get_outputs()[0].shape[-1])

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        inputs = pixel_values.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])

    # The session does its own device placement: inputs stay on the cpu.
    return EmbeddingModel(torch.nn.Identity(), forward, dim, preprocess, torch.device("cpu"), torch.float32)
