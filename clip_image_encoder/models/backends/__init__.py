"""The backends that run a model, in one registry of entries of one shape (as `BACKBONES` for backbones).

``torch`` builds a registered backbone; ``onnx`` (onnxruntime) and ``torchscript`` serve a folder that
``clip-image-encoder export`` wrote. The ``backend`` option's choices, the export formats and loading
all come from `BACKENDS`; adding a backend is adding one entry and its module.

This module is light on purpose (the options and ``--help`` read it): each entry's implementation, with
torch or onnxruntime, is imported only when a model is loaded or exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from clip_image_encoder.errors import ModelNotFoundError, OptionError

if TYPE_CHECKING:
    import torch

    from clip_image_encoder.models.network import EmbeddingModel


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    implementation: Callable[[], ModuleType]
    """Imports the module that runs it: ``load(source, device, dtype, hub_kwargs) -> EmbeddingModel`` and, for
    an export format, ``export(module, example, target)``."""
    export_file: str | None = None
    """The network's file in an export folder; None for a backend that builds the backbone itself."""
    quantizable: bool = False
    """Takes ``dtype: int8`` (dynamic quantisation of a torch module's linear layers)."""

    def load(self, name_or_path: str, device: torch.device, dtype: torch.dtype, hub_kwargs: dict[str, Any]) -> Any:
        """The model on ``device``: a backbone by name or folder, or the network file of an export folder."""
        source = str(self.exported_file(name_or_path)) if self.export_file else name_or_path
        return self.implementation().load(source, device, dtype, hub_kwargs)

    def export(self, model: EmbeddingModel, out: Path) -> Path:
        """Write the model's network into the export folder ``out``; the file written."""
        if self.export_file is None:
            raise OptionError(f"backend {self.name} is not an export format; formats: {', '.join(EXPORT_FORMATS)}")
        target = out / self.export_file
        self.implementation().export(model, target)
        return target

    def exported_file(self, folder: str) -> Path:
        path = Path(folder).expanduser() / str(self.export_file)
        if not path.is_file():
            raise ModelNotFoundError(
                f"backend {self.name} needs a folder made by 'clip-image-encoder export --format {self.name}'; "
                f"{path} does not exist"
            )
        return path


def _pytorch() -> ModuleType:
    from clip_image_encoder.models.backends import pytorch

    return pytorch


def _onnx() -> ModuleType:
    from clip_image_encoder.models.backends import onnx

    return onnx


def _torchscript() -> ModuleType:
    from clip_image_encoder.models.backends import torchscript

    return torchscript


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", "a registered backbone, built with torch", _pytorch, quantizable=True),
        Backend(
            "onnx",
            "an ONNX export, run by onnxruntime (its CUDA provider on cuda when onnxruntime-gpu is installed)",
            _onnx,
            export_file="model.onnx",
        ),
        Backend("torchscript", "a TorchScript export, run by torch", _torchscript, export_file="model.pt"),
    )
}
EXPORT_FORMATS: tuple[str, ...] = tuple(name for name, backend in BACKENDS.items() if backend.export_file)
"""``clip-image-encoder export --format``: the backends that serve an exported file."""


def backend_named(name: str) -> Backend:
    if name not in BACKENDS:
        raise OptionError(f"option backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return BACKENDS[name]
