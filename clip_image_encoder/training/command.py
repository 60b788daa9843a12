"""``clip-image-encoder train DATA --method simclr|barlow_twins|swav --model MODEL --out DIR``.

The flags are derived: the encoder's shared ones (model, device, batch size, decode threads, image size
limit) from `clip_image_encoder.options`, the training's own from the fields of `TrainConfig` that
carry a help text.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clip_image_encoder.errors import TrainingError
from clip_image_encoder.options import add_arguments
from clip_image_encoder.training.config import TrainConfig

SHARED_OPTIONS = ["pretrained_model_name_or_path", "device", "batch_size", "num_workers", "max_image_pixels"]
"""The encoder's options that training takes, with their declarations (the same flags as ``embed``)."""


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``train`` with the command line's sub-commands."""
    parser = commands.add_parser(
        "train",
        help="fine-tune a backbone on a folder of images (self-supervised) into a model folder to serve",
        description="Self-supervised fine-tuning (SimCLR, Barlow Twins, SwAV) of a backbone the encoder serves; "
        "writes a model folder that --model DIR loads, with training.json and a checkpoint for --resume.",
    )
    parser.add_argument("data", help="folder of training images (searched recursively; broken files are skipped)")
    parser.add_argument("--out", required=True, help="model folder to write (new or empty, or the one to --resume)")
    add_arguments(parser, SHARED_OPTIONS)
    for field in dataclasses.fields(TrainConfig):
        if "help" in field.metadata:
            _add_flag(parser, field)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=train_command)


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    flag, meta = f"--{field.name.replace('_', '-')}", field.metadata
    if isinstance(field.default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=meta["help"])
        return
    parser.add_argument(
        flag,
        type=type(field.default),
        default=field.default,
        choices=meta.get("choices"),
        help=f"{meta['help']} (default: {field.default})".replace("%", "%%"),
    )


def train_command(args: argparse.Namespace) -> int:
    """Train, then say where the model is and how to serve it; bad inputs exit 2 with a message."""
    from clip_image_encoder.cli import _fail
    from clip_image_encoder.training.trainer import train

    given = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if hasattr(args, field.name)
    }
    try:
        config = TrainConfig(**{**given, "data": Path(args.data), "out": Path(args.out), "progress": not args.quiet})
        record = train(config)
    except (TrainingError, ValueError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted: continue from the last finished epoch with the same command and --resume", flush=True)
        return 130
    losses = record["loss_per_epoch"]
    print(
        f"trained {config.method} for {config.epochs} epochs on {record['images']} images "
        f"(loss {losses[0]:.4f} -> {losses[-1]:.4f}); model in {config.out}"
    )
    if record["skipped_files"]:
        print(f"skipped {record['skipped_files']} unreadable files; see {config.out / 'skipped.csv'}")
    print(f"serve it with: clip-image-encoder serve --model {config.out}")
    return 0
