"""``clip-image-encoder train DATA --method simclr|barlow_twins|swav --model MODEL --out DIR``.

The flags are derived by the one flag generator (`config.flags`): the encoder's shared options
(`TRAINING_OPTIONS`: model, device, batch size, decode threads, image size limit) and the training's own,
declared on `TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from clip_image_encoder.config.flags import add_arguments
from clip_image_encoder.config.options import TRAINING_OPTIONS, declared_options
from clip_image_encoder.training.config import TrainConfig


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune a backbone on a folder of images (self-supervised) into a model folder to serve",
        description="Self-supervised fine-tuning (SimCLR, Barlow Twins, SwAV) of a backbone the encoder serves; "
        "writes a model folder that --model DIR loads, with training.json and a checkpoint for --resume.",
    )
    parser.add_argument("data", help="folder of training images (searched recursively; broken files are skipped)")
    parser.add_argument("--out", required=True, help="model folder to write (new or empty, or the one to --resume)")
    add_arguments(parser, TRAINING_OPTIONS)
    add_arguments(parser, declarations=declared_options(TrainConfig))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, then say where the model is and how to serve it."""
    from clip_image_encoder.training.trainer import train

    given = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if hasattr(args, field.name)
    }
    config = TrainConfig(**{**given, "data": Path(args.data), "out": Path(args.out), "progress": not args.quiet})
    try:
        record = train(config)
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
