"""Where training writes: the output folder (checked before any work), checkpoints, the model folder, the record.

The model folder is what ``--model DIR``, ``config.yml`` and the Executor load like any other:

- a Hugging Face backbone: ``save_pretrained`` (``config.json`` + ``model.safetensors``);
- EfficientNet-Lite0: ``config.json`` whose ``model_type`` names the packaged backbone, and
  ``model.safetensors`` with its state dict (the registry's builder reads both);

plus ``preprocessor_config.json`` (the preprocessing it was trained and is served with), ``training.json``
(how it was trained: method, data, hyper-parameters, loss curve, speed, memory), ``skipped.csv`` when
files were skipped, and ``checkpoint/last.pt`` (resume, or train more epochs with ``--resume``).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from clip_image_encoder.errors import TrainingError
from clip_image_encoder.images.preprocessing import PreprocessConfig

CHECKPOINT = Path("checkpoint") / "last.pt"
RECORD = "training.json"
SKIPPED = "skipped.csv"
PACKAGED_CONFIG = "config.json"


def prepare_output(out: Path, resume: bool) -> None:
    """Fail before any slow work when the folder cannot be written, would be overwritten, or has nothing to resume."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a folder")
    if resume and not (out / CHECKPOINT).is_file():
        raise TrainingError(f"--resume: {out} holds no checkpoint ({CHECKPOINT}); train without --resume first")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise TrainingError(f"--out {out} is not empty: give a new folder, or pass --resume to continue its training")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise TrainingError(
            f"--out {out} cannot be written ({exc.strerror or exc}): choose another folder or fix its permissions"
        ) from None


def save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically: an interrupted write leaves the previous one whole."""
    target = out / CHECKPOINT
    target.parent.mkdir(exist_ok=True)
    partial = target.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, target)


def load_checkpoint(out: Path) -> dict[str, Any]:
    """Tensors and plain values only (``weights_only``): a checkpoint cannot run code when loaded."""
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)


def save_model(out: Path, module: torch.nn.Module, preprocess: PreprocessConfig, packaged_name: str | None) -> None:
    """The backbone (the head is dropped) in the layout the registry loads, with its preprocessing."""
    if isinstance(module, PreTrainedModel):
        module.save_pretrained(out, safe_serialization=True)
    elif packaged_name is not None:
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
        save_file(state, out / "model.safetensors")
        (out / PACKAGED_CONFIG).write_text(json.dumps({"model_type": packaged_name}, indent=2) + "\n")
    else:
        raise TrainingError(f"cannot save a backbone of type {type(module).__name__}")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocess.to_dict(), indent=2) + "\n")
    for path in out.iterdir():  # save_pretrained writes 0600: a served folder must be readable (../shared/FACTS.md)
        if path.is_file():
            path.chmod(0o644)


def save_record(out: Path, record: dict[str, Any], skipped: list[tuple[Path, str]]) -> None:
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if skipped:
        with (out / SKIPPED).open("w", newline="") as handle:
            csv.writer(handle).writerows([("path", "error"), *((str(path), why) for path, why in skipped)])
    elif (out / SKIPPED).exists():
        (out / SKIPPED).unlink()
