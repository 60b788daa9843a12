"""The ``onnx`` backend: an export folder's ``model.onnx`` run by onnxruntime, on the GPU when it can.

The session places its inputs itself, so the model takes float32 batches on the cpu (``input_device``)
while it reports, and the encoder schedules for, the device it really runs on: with onnxruntime-gpu's
CUDA provider that is cuda, and decoding then overlaps the model as with torch on cuda.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_image_encoder.extras import require
from clip_image_encoder.images.preprocessing import PreprocessConfig
from clip_image_encoder.models.network import EmbeddingModel, Network, export_example, exportable

logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "pixel_values", "embeddings"
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


def load(source: str, device: torch.device, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> EmbeddingModel:
    """Serve an ONNX export: the CUDA provider on cuda when installed, else the cpu (float32 either way)."""
    import onnxruntime

    providers = [CPU_PROVIDER]
    if device.type == "cuda":
        if CUDA_PROVIDER in onnxruntime.get_available_providers():
            providers.insert(0, CUDA_PROVIDER)
        else:
            logger.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); running on cpu")
    session = onnxruntime.InferenceSession(source, providers=providers)
    runs_on = device if CUDA_PROVIDER in session.get_providers() else torch.device("cpu")

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        inputs = pixel_values.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])

    network = Network(
        torch.nn.Identity(),
        forward,
        int(session.get_outputs()[0].shape[-1]),
        PreprocessConfig.from_pretrained(str(Path(source).parent)),
    )
    return EmbeddingModel(network, runs_on, torch.float32, input_device=torch.device("cpu"))


def export(model: EmbeddingModel, target: Path) -> None:
    """``(N, 3, H, W)`` float32 in, ``(N, D)`` float32 out, the batch dimension dynamic."""
    for module in ("onnx", "onnxscript"):  # torch.onnx's exporter imports them as it goes
        require(module, "export", "export --format onnx")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            exportable(model),
            (export_example(model),),
            str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=True,
        )
