"""The command line: embed a folder into a file, compare two images, index and search a folder, serve.

    clip-image-encoder embed DATA --out FILE --format csv|lightly_csv|torch|npy|parquet
    clip-image-encoder similarity A.jpg B.jpg
    clip-image-encoder index DATA --db DIR|http://HOST:19530 [--engine ray] [--resume] [--index IVF_FLAT]
    clip-image-encoder delete KEY... --db DIR|http://HOST:19530
    clip-image-encoder search QUERY.jpg --db DIR -k 10 [--html PAGE.html]
    clip-image-encoder search --text "a red bicycle" --db DIR
    clip-image-encoder duplicates DATA | --db DIR [--threshold T] [--out groups.csv|json] [--html PAGE.html]
    clip-image-encoder train DATA --method simclr|barlow_twins|swav --model MODEL --out DIR
    clip-image-encoder serve [--config config.yml] [--port 51000] [--search --db DIR]
    clip-image-encoder export --format onnx|torchscript --out DIR
    clip-image-encoder health [--port 51000]
    clip-image-encoder options [--format yaml|markdown]
    clip-image-encoder deploy kubernetes|docker-compose --out DIR [--gpu] [--replicas N] [--shards N] [--db URI]

Every command uses the same pipeline as the Executor, and its encoder flags come from the one
declaration of the options (`clip_image_encoder.config.options`). Each command is a module of this
package with ``register(commands)``; its heavy imports (torch, Jina) happen in its handler, so that
``--help``, ``options`` and ``health`` start quickly. A user's mistake (`UserError`) is a message and exit
status 2, here and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clip_image_encoder.cli import (
    delete,
    deploy,
    duplicates,
    embed,
    export,
    health,
    index,
    options,
    search,
    serve,
    similarity,
    train,
)
from clip_image_encoder.errors import UserError

COMMANDS = (embed, similarity, index, delete, search, duplicates, export, train, serve, health, deploy, options)
"""The commands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-image-encoder", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:  # the user's to fix: the message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
