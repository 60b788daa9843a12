"""``clip-image-encoder export --format onnx|torchscript --out DIR``: a model folder another backend serves."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.config.flags import add_arguments
from clip_image_encoder.models.backends import EXPORT_FORMATS


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export the model to ONNX or TorchScript (a loadable folder)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    parser.add_argument("--out", required=True, help="output folder")
    add_arguments(parser, ["pretrained_model_name_or_path"])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.models.export import export_model
    from clip_image_encoder.models.loading import load_model

    model = load_model(args.pretrained_model_name_or_path, device="cpu", dtype="float32")
    target = export_model(model, args.format, Path(args.out))
    print(f"exported {args.pretrained_model_name_or_path} as {args.format} to {target}")
    print(f"serve it with: --backend {args.format} --model {args.out}")
    return 0
