"""The command line: embed a folder into a file, compare two images, index and search a folder, serve.

    clip-image-encoder embed DATA --out FILE --format csv|lightly_csv|torch|npy|parquet
    clip-image-encoder similarity A.jpg B.jpg
    clip-image-encoder index DATA --db DIR
    clip-image-encoder search QUERY.jpg --db DIR -k 10
    clip-image-encoder serve [--port 51000] [--search --db DIR]
    clip-image-encoder export --format onnx|torchscript --out DIR

Every command uses the same encoding pipeline as the Executor; the encoder flags are read from
the Executor's own arguments, so their names and defaults cannot drift apart.
"""

from __future__ import annotations

import argparse
import csv
import functools
import inspect
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clip_image_encoder.decoding import DecodeLimits, ImageInputError
from clip_image_encoder.encoding import PREPROCESSING_MODES, ImageEncoder, ImageItem
from clip_image_encoder.model import BACKENDS, configure_process, load_model
from clip_image_encoder.outputs import FORMATS, EmbeddingTable, read_embeddings, write_embeddings
from clip_image_encoder.postprocessing import OUTPUT_DTYPES, OutputOptions
from clip_image_encoder.preprocessing import ROTATIONS
from clip_image_encoder.similarity import cosine_similarity

CHECKPOINT_EVERY = 5000
"""``embed`` rewrites its output every this many new embeddings, so ``--resume`` loses little."""

_ENCODER_FLAGS = (
    "pretrained_model_name_or_path",
    "device",
    "dtype",
    "backend",
    "batch_size",
    "normalize",
    "quantize",
    "embed_dim",
    "output_dtype",
    "rotation",
    "preprocessing",
    "num_workers",
    "num_threads",
    "keep_activation_memory",
    "max_image_pixels",
)
_CHOICES = {
    "preprocessing": PREPROCESSING_MODES,
    "dtype": ("auto", "float32", "float16", "bfloat16", "int8"),
    "output_dtype": OUTPUT_DTYPES,
    "backend": BACKENDS,
    "rotation": tuple(ROTATIONS),
}


def _executor_arguments() -> dict[str, tuple[object, str]]:
    """The Executor's constructor defaults and ``:param:`` texts: the one source of truth for the flags."""
    from clip_image_encoder.executor import CLIPImageEncoder

    parameters = inspect.signature(CLIPImageEncoder.__init__).parameters
    texts = dict(re.findall(r":param (\w+): (.*?)(?=\n\s*:param |\Z)", CLIPImageEncoder.__init__.__doc__ or "", re.S))
    return {
        name: (p.default, " ".join(texts.get(name, "").split()))
        for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _add_encoder_flags(parser: argparse.ArgumentParser, names: Sequence[str] = _ENCODER_FLAGS) -> None:
    arguments = _executor_arguments()
    for name in names:
        default, text = arguments[name]
        flags = ["--model", f"--{name}"] if name == "pretrained_model_name_or_path" else [f"--{name.replace('_', '-')}"]
        help_text = text.replace("%", "%%")
        if isinstance(default, bool):  # BooleanOptionalAction adds the default itself
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            parser.add_argument(
                *flags,
                dest=name,
                type=type(default),
                default=default,
                choices=_CHOICES.get(name),
                help=help_text + " (default: %(default)s)",
            )


def _model_identity(name_or_path: str) -> str:
    """What an index records as its model: the resolved folder, or the hub name."""
    folder = Path(name_or_path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name_or_path


def _encoder_from(args: argparse.Namespace) -> ImageEncoder:
    configure_process(args.num_threads, keep_activation_memory=args.keep_activation_memory)
    load = functools.partial(
        load_model, args.pretrained_model_name_or_path, device=args.device, dtype=args.dtype, backend=args.backend
    )
    return ImageEncoder(load, DecodeLimits(max_image_pixels=args.max_image_pixels), num_workers=args.num_workers)


def _encode_paths(encoder: ImageEncoder, paths: Sequence[Path], args: argparse.Namespace) -> Iterator:
    output = OutputOptions(
        normalize=args.normalize, quantize=args.quantize, embed_dim=args.embed_dim or None, dtype=args.output_dtype
    )
    return encoder.encode(
        (ImageItem(str(path), rotation=args.rotation) for path in paths),
        batch_size=args.batch_size,
        output=output,
        preprocessing=args.preprocessing,
    )


def list_images(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, skipping hidden files and folders; non-images fail later, reported."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def embed_folder(args: argparse.Namespace) -> int:
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        return _fail(f"{data} is not a folder")
    if out.exists() and not (args.overwrite or args.resume):
        return _fail(f"{out} exists: pass --overwrite to replace it or --resume to add the missing files")
    table = read_embeddings(out, args.format) if args.resume and out.exists() else EmbeddingTable()
    done = set(table.filenames)
    names = list(table.filenames)
    vectors = list(table.embeddings)
    todo = [path for path in list_images(data) if path.relative_to(data).as_posix() not in done]
    encoder = _encoder_from(args)
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="embedding", disable=args.quiet) as progress:
        for path, result in zip(todo, _encode_paths(encoder, todo, args), strict=True):
            name = path.relative_to(data).as_posix()
            if isinstance(result, ImageInputError):
                errors.append((name, str(result)))
            else:
                names.append(name)
                vectors.append(result)
                if len(names) % CHECKPOINT_EVERY == 0:
                    write_embeddings(out, _table(names, vectors), args.format)
            progress.update()
    encoder.close()
    write_embeddings(out, _table(names, vectors), args.format)
    elapsed = time.perf_counter() - started
    embedded = len(todo) - len(errors)
    print(f"embedded {embedded} images in {elapsed:.1f} s ({embedded / max(elapsed, 1e-9):.1f} images/s) into {out}")
    if len(done):
        print(f"kept {len(done)} embeddings already in {out}")
    if errors:
        report = out.with_name(out.name + ".errors.csv")
        with report.open("w", newline="") as handle:
            csv.writer(handle).writerows([("filename", "error"), *errors])
        print(f"{len(errors)} file{'s' if len(errors) != 1 else ''} could not be embedded; see {report}")
    return 0


def _table(names: list[str], vectors: list[np.ndarray]) -> EmbeddingTable:
    return EmbeddingTable(
        list(names), np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
    )


def similarity(args: argparse.Namespace) -> int:
    encoder = _encoder_from(args)
    first, second = list(_encode_paths(encoder, [Path(args.a), Path(args.b)], args))
    encoder.close()
    for path, result in ((args.a, first), (args.b, second)):
        if isinstance(result, ImageInputError):
            return _fail(f"{path}: {result}")
    print(f"{cosine_similarity(first, second):.6f}")
    return 0


def index_folder(args: argparse.Namespace) -> int:
    from clip_image_encoder.index import VectorIndex

    data = Path(args.data).resolve()
    if not data.is_dir():
        return _fail(f"{data} is not a folder")
    index = VectorIndex(Path(args.db), model_name=_model_identity(args.pretrained_model_name_or_path))
    paths = list_images(data)
    encoder = _encoder_from(args)
    keys, vectors, failures = [], [], 0
    for path, result in tqdm(
        zip(paths, _encode_paths(encoder, paths, args), strict=True), total=len(paths), unit="img"
    ):
        if isinstance(result, ImageInputError):
            failures += 1
            print(f"skipped {path}: {result}", file=sys.stderr)
            continue
        keys.append(str(path))
        vectors.append(result)
        if len(keys) == args.batch_size * 8:
            index.upsert(keys, np.stack(vectors))
            keys, vectors = [], []
    index.upsert(keys, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
    encoder.close()
    print(f"indexed {len(paths) - failures} images from {data}; {len(index)} in {args.db}; {failures} skipped")
    index.close()
    return 0


def search(args: argparse.Namespace) -> int:
    from clip_image_encoder.index import VectorIndex

    if not Path(args.db).is_dir():
        return _fail(f"{args.db} holds no index: build one with 'clip-image-encoder index DATA --db {args.db}'")
    index = VectorIndex(Path(args.db), model_name=_model_identity(args.pretrained_model_name_or_path))
    encoder = _encoder_from(args)
    (query,) = list(_encode_paths(encoder, [Path(args.query)], args))
    encoder.close()
    if isinstance(query, ImageInputError):
        return _fail(f"{args.query}: {query}")
    for rank, (key, score) in enumerate(index.search(query, args.k), start=1):
        print(f"{rank:>3}  {score:.4f}  {key}")
    index.close()
    return 0


def serve(args: argparse.Namespace) -> int:
    from jina import Flow

    from clip_image_encoder.executor import CLIPImageEncoder

    uses_with = {name: getattr(args, name) for name in _ENCODER_FLAGS}
    flow = Flow(port=args.port, protocol=args.protocol).add(name="encoder", uses=CLIPImageEncoder, uses_with=uses_with)
    if args.search:
        from clip_image_encoder.indexer import ImageIndexer

        flow = flow.add(name="indexer", uses=ImageIndexer, uses_with={"db": args.db})
    with flow:
        flow.block()
    return 0


def export(args: argparse.Namespace) -> int:
    from clip_image_encoder.export import export_model

    model = load_model(args.pretrained_model_name_or_path, device="cpu", dtype="float32")
    target = export_model(model, args.format, Path(args.out))
    print(f"exported {args.pretrained_model_name_or_path} as {args.format} to {target}")
    if args.format == "onnx":
        print(f"serve it with: --backend onnx --model {args.out}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-image-encoder", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed every image under a folder into one file")
    embed.add_argument("data", help="folder of images (searched recursively)")
    embed.add_argument("--out", required=True, help="output file")
    embed.add_argument("--format", choices=FORMATS, default="csv")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output")
    embed.add_argument("--resume", action="store_true", help="keep an existing output and embed only the missing files")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_encoder_flags(embed)
    embed.set_defaults(handler=embed_folder)

    compare = commands.add_parser("similarity", help="cosine similarity of two images")
    compare.add_argument("a")
    compare.add_argument("b")
    _add_encoder_flags(compare)
    compare.set_defaults(handler=similarity)

    index = commands.add_parser("index", help="add every image under a folder to a search index")
    index.add_argument("data")
    index.add_argument("--db", required=True, help="index folder (created if missing)")
    _add_encoder_flags(index)
    index.set_defaults(handler=index_folder)

    find = commands.add_parser("search", help="the indexed images most similar to a query image")
    find.add_argument("query")
    find.add_argument("--db", required=True)
    find.add_argument("-k", type=int, default=10, help="how many results")
    _add_encoder_flags(find)
    find.set_defaults(handler=search)

    exporter = commands.add_parser("export", help="export the model to ONNX or TorchScript (a loadable folder)")
    exporter.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    exporter.add_argument("--out", required=True, help="output folder")
    _add_encoder_flags(exporter, ["pretrained_model_name_or_path"])
    exporter.set_defaults(handler=export)

    server = commands.add_parser("serve", help="serve the Executor (or the search Flow) with config.yml's arguments")
    server.add_argument("--port", type=int, default=51000)
    server.add_argument("--protocol", choices=("grpc", "http", "websocket"), default="grpc")
    server.add_argument("--search", action="store_true", help="serve the search Flow: /index and /search")
    server.add_argument("--db", default="index", help="index folder of the search Flow")
    _add_encoder_flags(server)
    server.set_defaults(handler=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
