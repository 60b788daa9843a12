"""``clip-image-encoder similarity A B``: the cosine similarity of two images' embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS
from clip_image_encoder.errors import EmbeddingError, OptionError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("similarity", help="cosine similarity of two images")
    parser.add_argument("a")
    parser.add_argument("b")
    add_arguments(parser, FOLDER_OPTIONS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.encoding.images import ImageEncoder, encode_paths
    from clip_image_encoder.encoding.outputs import cosine_similarity

    options = parsed_options(args)
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        first, second = list(encode_paths(encoder, [Path(args.a), Path(args.b)], options))
    for path, result in ((args.a, first), (args.b, second)):
        if isinstance(result, EmbeddingError):
            raise OptionError(f"{path}: {result}")
    print(f"{cosine_similarity(first, second):.6f}")
    return 0
