"""``clip-image-encoder delete KEY... --db DIR|URI``: forget images in a vector store."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.cli.index import DB_HELP


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("delete", help="forget images in a vector store (by path, or by key)")
    parser.add_argument("keys", nargs="+", help="image files as indexed (relative paths are made absolute), or keys")
    parser.add_argument("--db", required=True, help=DB_HELP)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.search.indexing import open_index, require_index

    require_index(args.db)
    with open_index(args.db) as store:
        keys = [key if "://" in key or Path(key).is_absolute() else str(Path(key).resolve()) for key in args.keys]
        held = store.contains(keys)
        store.delete(sorted(held))
        print(f"deleted {len(held)} of {len(keys)} keys; {len(store)} in {args.db}")
    return 0
