"""What a training run is given, declared once: `TrainConfig` feeds `train`, and ``train``'s flags derive from it.

The options shared with the encoder (model, device, batch size, decode threads, image size limit) keep
their declaration in `clip_image_encoder.options`; the fields here that carry a ``help`` are the
training's own, and become ``--name-with-dashes`` flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_image_encoder.options import DEFAULT_MODEL, EncoderOptions
from clip_image_encoder.training.methods import METHODS


def _flag(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    """Folder of training images, searched recursively (hidden files skipped)."""
    out: Path
    """Model folder to write: the weights, ``preprocessor_config.json``, ``training.json`` and checkpoints."""
    # --- shared with the encoder (clip_image_encoder.options) ---
    pretrained_model_name_or_path: str = DEFAULT_MODEL
    device: str = "auto"
    batch_size: int = EncoderOptions.batch_size
    num_workers: int = EncoderOptions.num_workers
    max_image_pixels: int = EncoderOptions.max_image_pixels
    # --- the training's own ---
    method: str = _flag("simclr", "Self-supervised method.", choices=tuple(METHODS))
    epochs: int = _flag(10, "Passes over the images.", minimum=1)
    accumulate: int = _flag(
        1,
        "Batches whose gradients are summed into one optimiser step (less memory for the same step size; the "
        "negatives and correlations of a loss still come from one batch).",
        minimum=1,
    )
    learning_rate: float = _flag(1e-3, "AdamW learning rate of the method's head (projection, prototypes).")
    backbone_learning_rate: float = _flag(
        1e-5, "AdamW learning rate of the backbone: small, so that fine-tuning adapts what it knows, not erases it."
    )
    weight_decay: float = _flag(1e-4, "AdamW weight decay.")
    seed: int = _flag(0, "Seed of the head's initialisation, the image order and the augmentations.")
    amp: bool = _flag(True, "Mixed precision on cuda (bfloat16 where supported, else float16 with loss scaling).")
    resume: bool = _flag(False, "Continue from the checkpoint in --out (written after every epoch).")
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("epochs", "accumulate", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: the losses compare images of one batch")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed (epochs may grow; device and threads may change)."""
        return {
            "data": str(Path(self.data).resolve()),
            "pretrained_model_name_or_path": self.pretrained_model_name_or_path,
            "method": self.method,
            "batch_size": self.batch_size,
            "accumulate": self.accumulate,
            "learning_rate": self.learning_rate,
            "backbone_learning_rate": self.backbone_learning_rate,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }
