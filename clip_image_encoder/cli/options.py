"""``clip-image-encoder options``: every option at its default, as ``config.yml``'s ``with:`` or the README table."""

from __future__ import annotations

import argparse

from clip_image_encoder.config.files import config_yaml, markdown_table


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("options", help="print every option: config.yml's 'with:' or the README's table")
    parser.add_argument("--format", choices=("yaml", "markdown"), default="yaml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(config_yaml() if args.format == "yaml" else markdown_table(), end="")
    return 0
