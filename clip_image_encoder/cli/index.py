"""``clip-image-encoder index DATA --db DIR|URI``: add every image under a folder to a vector store."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from clip_image_encoder.cli.embed import add_engine_arguments
from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS
from clip_image_encoder.models.identity import model_identity
from clip_image_encoder.search.stores import DEFAULT_INDEX, INDEX_TYPES

if TYPE_CHECKING:
    from clip_image_encoder.bulk.run import BulkReport

DB_HELP = (
    "the vector store: a folder (FAISS + SQLite, created if missing), or a Milvus server "
    "http://HOST:19530[/COLLECTION] (token from MILVUS_TOKEN)"
)


def add_index_argument(parser: argparse.ArgumentParser) -> None:
    """``--index``, which ``index``, ``search``, ``duplicates`` and ``serve`` share."""
    parser.add_argument(
        "--index",
        default=None,
        help=f"index type of a new store, TYPE[:name=value,...] with TYPE one of {', '.join(INDEX_TYPES)} "
        f"(default {DEFAULT_INDEX}; exact FLAT while small); an existing store keeps its own, and takes new "
        "search parameters (nprobe, ef)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="add every image under a folder to a vector store")
    parser.add_argument("data", help="folder of images (searched recursively); with --engine ray also s3:// or gs://")
    parser.add_argument("--db", required=True, help=DB_HELP)
    parser.add_argument(
        "--resume", action="store_true", help="embed only the images the store does not hold yet (else all, replaced)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_index_argument(parser)
    add_engine_arguments(parser)
    add_arguments(parser, FOLDER_OPTIONS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.bulk.run import BulkRun, index_folder
    from clip_image_encoder.search.indexing import open_index

    options = parsed_options(args)
    bulk = BulkRun(
        data=args.data,
        options=options,
        engine=args.engine,
        resume=args.resume,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
        progress=not args.quiet,
    )
    with open_index(args.db, model_identity(options.pretrained_model_name_or_path), args.index) as store:
        report = index_folder(bulk, store)
        print_skipped(report)
        kept = f"; {report.kept} already held" if report.kept else ""
        print(
            f"indexed {report.embedded} images from {args.data}{kept}; {len(store)} in {args.db}; "
            f"{len(report.errors)} skipped"
        )
    return 0


def print_skipped(report: BulkReport) -> None:
    for name, why in report.errors:
        print(f"skipped {name}: {why}", file=sys.stderr)
