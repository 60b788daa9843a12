"""``clip-image-encoder search QUERY | --text WORDS --db DIR``: the indexed images nearest to a query, best first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clip_image_encoder.cli.index import DB_HELP, add_index_argument
from clip_image_encoder.config.flags import add_arguments, parsed_options
from clip_image_encoder.config.options import FOLDER_OPTIONS
from clip_image_encoder.errors import EmbeddingError, OptionError
from clip_image_encoder.models.identity import model_identity


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="the indexed images most similar to a query image or text")
    parser.add_argument("query", nargs="?", help="query image file (or give --text)")
    parser.add_argument("--text", help="a text query, embedded by the text tower of --model (CLIP, SigLIP)")
    parser.add_argument("--db", required=True, help=DB_HELP)
    parser.add_argument("-k", type=int, default=10, help="how many results")
    parser.add_argument("--html", help="also write the results as one self-contained page with thumbnails")
    add_index_argument(parser)
    add_arguments(parser, FOLDER_OPTIONS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.search.indexing import (
        embed_image_query,
        embed_text_query,
        empty_index_message,
        open_index,
        require_index,
    )

    if (args.query is None) == (args.text is None):
        raise OptionError('give one query: an image file, or --text "words to search for"')
    require_index(args.db)
    options = parsed_options(args)
    with open_index(args.db, index=args.index) as index:
        if len(index) == 0:
            raise OptionError(empty_index_message(args.db))
        index.check_model(model_identity(options.pretrained_model_name_or_path))  # before loading any model
        if args.text is not None:
            query = embed_text_query(args.text, options)
        else:
            query = embed_image_query(Path(args.query), options)
        if isinstance(query, EmbeddingError):
            raise OptionError(f"{args.text if args.text is not None else args.query}: {query}")
        matches = index.search(query, args.k)
        model = index.model_name or ""
    for rank, (key, score) in enumerate(matches, start=1):
        print(f"{rank:>3}  {score:.4f}  {key}")
    if args.html:
        from clip_image_encoder.search.pages import search_page, write_page

        query_image = None if args.query is None else Path(args.query)
        page = search_page(matches, query_image=query_image, query_text=args.text, model=model, db=str(args.db))
        write_page(Path(args.html), page)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
