"""``clip-image-encoder duplicates DATA | --db DIR``: groups of near-duplicate images, the most original first."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clip_image_encoder.cli.index import add_index_argument, print_skipped
from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS, EncoderOptions
from clip_image_encoder.errors import OptionError
from clip_image_encoder.extras import require
from clip_image_encoder.models.identity import DUPLICATES_MODEL, model_identity

if TYPE_CHECKING:
    from clip_image_encoder.search.duplicates import DuplicateGroup


@dataclass(frozen=True)
class Found:
    groups: list[DuplicateGroup]
    images: int
    threshold: float
    model: str


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("duplicates", help="groups of near-duplicate images, the most original first")
    parser.add_argument("data", nargs="?", help="folder of images (searched recursively)")
    parser.add_argument(
        "--db", help="vector store (a folder, or http://HOST:19530): reuse it (without DATA), or add DATA to it"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine similarity at or above which two images are near-duplicates (default: the backbone's "
        "calibrated one, see README)",
    )
    parser.add_argument("--out", help="also write the groups to a .csv or .json file")
    parser.add_argument("--html", help="also write the groups as one self-contained page with thumbnails")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_index_argument(parser)
    add_arguments(parser, FOLDER_OPTIONS, command_defaults={"pretrained_model_name_or_path": DUPLICATES_MODEL})
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Groups of near-duplicate images: of a folder (indexed into ``--db``, or a temporary index), or of ``--db``."""
    if args.data is None and args.db is None:
        raise OptionError("give a folder of images (DATA), or --db of an index built with 'clip-image-encoder index'")
    if args.data is not None and not Path(args.data).is_dir():
        raise OptionError(f"{args.data} is not a folder")
    require("scipy", "duplicates", "duplicates")  # before embedding anything
    found = _find(args, parsed_options(args))
    _print_groups(found)
    if args.out:
        from clip_image_encoder.search.duplicates import write_groups

        write_groups(Path(args.out), found.groups, threshold=found.threshold, model=found.model)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        from clip_image_encoder.search.pages import duplicates_page, write_page

        page = duplicates_page(found.groups, threshold=found.threshold, model=found.model, source=args.data or args.db)
        write_page(Path(args.html), page)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _find(args: argparse.Namespace, options: EncoderOptions) -> Found:
    from clip_image_encoder.bulk.run import BulkRun, index_folder
    from clip_image_encoder.search.duplicates import find_duplicates
    from clip_image_encoder.search.indexing import default_threshold, empty_index_message, open_index, require_index

    if args.data is None:
        require_index(args.db)
    with tempfile.TemporaryDirectory(prefix="duplicates-") as scratch:
        db = args.db or scratch
        model = model_identity(options.pretrained_model_name_or_path) if args.data is not None else None
        threshold = args.threshold
        if threshold is None and model is not None:  # before embedding the folder: fail fast without a default
            threshold = default_threshold(model)
        with open_index(db, model, args.index) as index:
            if args.data is not None:
                folder = BulkRun(str(Path(args.data).resolve()), options, progress=not args.quiet)
                print_skipped(index_folder(folder, index))
            if len(index) == 0:
                raise OptionError(empty_index_message(db) if args.data is None else f"{args.data} holds no image")
            threshold = threshold if threshold is not None else default_threshold(index.model_name)
            groups = find_duplicates(index, threshold, progress=not args.quiet)
            return Found(groups, len(index), threshold, index.model_name or "")


def _print_groups(found: Found) -> None:
    in_groups = sum(len(group.members) for group in found.groups)
    print(
        f"{len(found.groups)} group{'s' if len(found.groups) != 1 else ''} of near-duplicates ({in_groups} images) "
        f"among {found.images} images, at cosine >= {found.threshold}"
    )
    for number, group in enumerate(found.groups, start=1):
        print(f"group {number}: {len(group.members)} images, the most original first")
        for member in group.members:
            facts = member.facts
            size = f"{facts.width}x{facts.height}" if facts.width else "?"
            print(f"  {member.similarity:.4f}  {size:>11}  {member.key}")
