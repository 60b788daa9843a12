"""What a training run is given, declared once: `TrainConfig` feeds `train`, and ``train``'s flags derive from it.

The options shared with the encoder (model, device, batch size, decode threads, image size limit: those
whose spec says ``training``) keep their declaration in `config.options`; the fields declared here with
`option` are the training's own. Both become ``--name-with-dashes`` flags through `config.flags`, and
both are checked by the same `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_image_encoder.config.options import EncoderOptions, option, validate
from clip_image_encoder.errors import OptionError

METHOD_NAMES = ("simclr", "barlow_twins", "swav")
"""The names of `training.methods.METHODS`, here so that ``train --help`` does not import torch (a test keeps
them equal)."""


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    """Folder of training images, searched recursively (hidden files skipped)."""
    out: Path
    """Model folder to write: the weights, ``preprocessor_config.json``, ``training.json`` and checkpoints."""
    # --- shared with the encoder (config.options: TRAINING_OPTIONS) ---
    pretrained_model_name_or_path: str = EncoderOptions.pretrained_model_name_or_path
    device: str = EncoderOptions.device
    batch_size: int = EncoderOptions.batch_size
    num_workers: int = EncoderOptions.num_workers
    max_image_pixels: int = EncoderOptions.max_image_pixels
    # --- the training's own ---
    method: str = option("simclr", "Self-supervised method.", choices=METHOD_NAMES)
    epochs: int = option(10, "Passes over the images.", minimum=1)
    accumulate: int = option(
        1,
        "Batches whose gradients are summed into one optimiser step (less memory for the same step size; the "
        "negatives and correlations of a loss still come from one batch).",
        minimum=1,
    )
    learning_rate: float = option(1e-3, "AdamW learning rate of the method's head (projection, prototypes).", minimum=0)
    backbone_learning_rate: float = option(
        1e-5,
        "AdamW learning rate of the backbone: small, so that fine-tuning adapts what it knows, not erases it.",
        minimum=0,
    )
    weight_decay: float = option(1e-4, "AdamW weight decay.", minimum=0)
    seed: int = option(0, "Seed of the head's initialisation, the image order and the augmentations.")
    amp: bool = option(True, "Mixed precision on cuda (bfloat16 where supported, else float16 with loss scaling).")
    resume: bool = option(False, "Continue from the checkpoint in --out (written after every epoch).")
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        validate(self)
        if self.batch_size < 2:
            raise OptionError("option batch_size must be at least 2 to train: the losses compare images of one batch")

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
