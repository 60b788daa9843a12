"""``clip-image-encoder embed DATA --out FILE``: every image under a folder into one embedding file."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.bulk.files import FORMATS
from clip_image_encoder.bulk.run import ENGINES, BulkRun, embed_folder
from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("embed", help="embed every image under a folder into one file")
    parser.add_argument("data", help="folder of images (searched recursively); with --engine ray also s3:// or gs://")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--format", choices=FORMATS, default="csv")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--resume", action="store_true", help="keep an existing output and embed only the missing files"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(parser)
    add_arguments(parser, FOLDER_OPTIONS)
    parser.set_defaults(handler=run)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's flags, which ``embed`` and ``index`` share."""
    parser.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default="local",
        help="local: this process; ray: Ray Data actors, on the cluster RAY_ADDRESS names or a new local one "
        "(pip install .[ray])",
    )
    parser.add_argument("--ray-actors", type=int, default=1, help="ray engine: encoders at once, each with the model")
    parser.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=1,
        help="ray engine: CPUs reserved for each actor, also its torch threads unless --num-threads is set",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    report = embed_folder(
        BulkRun(
            data=args.data,
            out=out,
            fmt=args.format,
            options=parsed_options(args),
            engine=args.engine,
            overwrite=args.overwrite,
            resume=args.resume,
            ray_actors=args.ray_actors,
            ray_cpus_per_actor=args.ray_cpus_per_actor,
            progress=not args.quiet,
        )
    )
    rate = report.embedded / max(report.seconds, 1e-9)
    print(f"embedded {report.embedded} images in {report.seconds:.1f} s ({rate:.1f} images/s) into {out}")
    if report.kept:
        print(f"kept {report.kept} embeddings already in {out}")
    if report.errors_file is not None:
        count = len(report.errors)
        print(f"{count} file{'s' if count != 1 else ''} could not be embedded; see {report.errors_file}")
    return 0
