"""``clip-image-encoder index DATA --db DIR``: add every image under a folder to a search index."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS
from clip_image_encoder.errors import OptionError
from clip_image_encoder.models.identity import model_identity


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="add every image under a folder to a search index")
    parser.add_argument("data")
    parser.add_argument("--db", required=True, help="index folder (created if missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(parser, FOLDER_OPTIONS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.search.indexing import index_images, open_index

    data = Path(args.data).resolve()
    if not data.is_dir():
        raise OptionError(f"{data} is not a folder")
    options = parsed_options(args)
    with open_index(args.db, model_identity(options.pretrained_model_name_or_path)) as index:
        indexed, failures = index_images(data, index, options, args.quiet)
        print(f"indexed {indexed} images from {data}; {len(index)} in {args.db}; {failures} skipped")
    return 0
