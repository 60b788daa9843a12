"""The command line: embed a folder into a file, compare two images, index and search a folder, serve.

    clip-image-encoder embed DATA --out FILE --format csv|lightly_csv|torch|npy|parquet
    clip-image-encoder similarity A.jpg B.jpg
    clip-image-encoder index DATA --db DIR
    clip-image-encoder search QUERY.jpg --db DIR -k 10
    clip-image-encoder serve [--config config.yml] [--port 51000] [--search --db DIR]
    clip-image-encoder export --format onnx|torchscript --out DIR
    clip-image-encoder health [--port 51000]
    clip-image-encoder options [--format yaml|markdown]

Every command uses the same pipeline as the Executor, and its encoder flags come from the one
declaration of the options (`clip_image_encoder.options`).
"""

from __future__ import annotations

import argparse
import csv
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from tqdm import tqdm

from clip_image_encoder.embedding_files import FORMATS, EmbeddingTable, read_embeddings, write_embeddings
from clip_image_encoder.errors import EmbeddingError, ModelNotFoundError, OptionError
from clip_image_encoder.exported import EXPORT_FILES
from clip_image_encoder.options import OPTIONS, EncoderOptions, add_arguments, config_yaml, markdown_table, spec
from clip_image_encoder.pipeline import EncodeResult, ImageEncoder, ImageItem
from clip_image_encoder.shutdown import stop_executors_in_order
from clip_image_encoder.similarity import cosine_similarity

if TYPE_CHECKING:
    from clip_image_encoder.vector_store import VectorIndex

CHECKPOINT_EVERY = 5000
"""``embed`` rewrites its output every this many new embeddings, so ``--resume`` loses little."""
DEFAULT_CONFIG = Path("config.yml")

FOLDER_OPTIONS = [name for name, option in OPTIONS.items() if not spec(option).serving_only]
"""The options of the commands that embed files (the others concern Documents and remote uris)."""


def _options_from(args: argparse.Namespace) -> EncoderOptions:
    return EncoderOptions(**{name: getattr(args, name) for name in OPTIONS if hasattr(args, name)})


def _model_identity(name_or_path: str) -> str:
    """What an index records as its model: the resolved folder, or the hub name."""
    folder = Path(name_or_path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name_or_path


def _encode_paths(encoder: ImageEncoder, paths: Sequence[Path], options: EncoderOptions) -> Iterator[EncodeResult]:
    return encoder.encode((ImageItem(str(path), rotation=options.rotation) for path in paths), options)


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
    names, vectors = list(table.filenames), list(table.embeddings)
    todo = [path for path in list_images(data) if path.relative_to(data).as_posix() not in done]
    options = _options_from(args)
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    with (
        ImageEncoder.from_options(options, any_local_file=True) as encoder,
        tqdm(total=len(todo), unit="img", desc="embedding", disable=args.quiet) as progress,
    ):
        for path, result in zip(todo, _encode_paths(encoder, todo, options), strict=True):
            name = path.relative_to(data).as_posix()
            if isinstance(result, EmbeddingError):
                errors.append((name, str(result)))
            else:
                names.append(name)
                vectors.append(result)
                if len(names) % CHECKPOINT_EVERY == 0:
                    write_embeddings(out, _table(names, vectors), args.format)
            progress.update()
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
    options = _options_from(args)
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        first, second = list(_encode_paths(encoder, [Path(args.a), Path(args.b)], options))
    for path, result in ((args.a, first), (args.b, second)):
        if isinstance(result, EmbeddingError):
            return _fail(f"{path}: {result}")
    print(f"{cosine_similarity(first, second):.6f}")
    return 0


def _open_index(db: str, options: EncoderOptions) -> VectorIndex:
    """The index folder, checked to hold embeddings of this model (lazy import: faiss is only needed here)."""
    from clip_image_encoder.vector_store import VectorIndex

    return VectorIndex(Path(db), model_name=_model_identity(options.pretrained_model_name_or_path))


def index_folder(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    if not data.is_dir():
        return _fail(f"{data} is not a folder")
    options = _options_from(args)
    paths = list_images(data)
    keys, vectors, failures = [], [], 0
    with _open_index(args.db, options) as index, ImageEncoder.from_options(options, any_local_file=True) as encoder:
        results = _encode_paths(encoder, paths, options)
        for path, result in tqdm(zip(paths, results, strict=True), total=len(paths), unit="img"):
            if isinstance(result, EmbeddingError):
                failures += 1
                print(f"skipped {path}: {result}", file=sys.stderr)
                continue
            keys.append(str(path))
            vectors.append(result)
            if len(keys) == options.batch_size * 8:
                index.upsert(keys, np.stack(vectors))
                keys, vectors = [], []
        index.upsert(keys, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
        print(f"indexed {len(paths) - failures} images from {data}; {len(index)} in {args.db}; {failures} skipped")
    return 0


def search(args: argparse.Namespace) -> int:
    if not Path(args.db).is_dir():
        return _fail(f"{args.db} holds no index: build one with 'clip-image-encoder index DATA --db {args.db}'")
    options = _options_from(args)
    with _open_index(args.db, options) as index:
        with ImageEncoder.from_options(options, any_local_file=True) as encoder:
            (query,) = list(_encode_paths(encoder, [Path(args.query)], options))
        if isinstance(query, EmbeddingError):
            return _fail(f"{args.query}: {query}")
        for rank, (key, score) in enumerate(index.search(query, args.k), start=1):
            print(f"{rank:>3}  {score:.4f}  {key}")
    return 0


def serving_options(config: Path | None, given: dict[str, Any]) -> EncoderOptions:
    """The ``with:`` of a Jina config file (``config.yml``), overridden by the flags given on the command line."""
    with_block: dict[str, Any] = {}
    if config is not None:
        document = yaml.safe_load(config.read_text()) or {}
        with_block = document.get("with") or {}
    return EncoderOptions.from_mapping({**with_block, **given})


def serve(args: argparse.Namespace) -> int:
    from jina import Flow

    from clip_image_encoder.executor import CLIPImageEncoder

    config = args.config if args.config is not None or not DEFAULT_CONFIG.is_file() else DEFAULT_CONFIG
    if config is not None and not Path(config).is_file():
        return _fail(f"config file {config} does not exist")
    given = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    options = serving_options(Path(config) if config else None, given)
    observability = {"tracing": args.tracing}
    if args.tracing:
        observability |= {
            "traces_exporter_host": args.traces_exporter_host,
            "traces_exporter_port": args.traces_exporter_port,
        }
    flow = Flow(port=args.port, protocol=args.protocol, **observability).add(
        name="encoder",
        uses=CLIPImageEncoder,
        uses_with=options.as_dict(),
        monitoring=args.monitoring,
        port_monitoring=args.port_monitoring,
        **observability,
    )
    if args.search:
        from clip_image_encoder.indexer import ImageIndexer

        flow = flow.add(
            name="indexer", uses=ImageIndexer, uses_with={"db": args.db, "stop_timeout_s": options.stop_timeout_s}
        )
    stop = _event_set_by_stop_signals()
    with flow:
        while not stop.wait(0.5):  # a timeout: the signal may land on another thread; this one runs its handler
            pass
        # Leaving `with` closes the gateway first, which cancels the calls in flight: drain the Executors before.
        stop_executors_in_order(["encoder", "indexer"], options.stop_timeout_s + 5)
    return 0


def _event_set_by_stop_signals() -> threading.Event:
    """Ctrl+C, docker stop and Kubernetes (SIGINT, SIGTERM) all stop the same way: in order, answering first.

    Without this, SIGTERM killed this process alone and left the Flow's processes serving.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def export(args: argparse.Namespace) -> int:
    from clip_image_encoder.exported import export_model
    from clip_image_encoder.model_loading import load_model

    model = load_model(args.pretrained_model_name_or_path, device="cpu", dtype="float32")
    target = export_model(model, args.format, Path(args.out))
    print(f"exported {args.pretrained_model_name_or_path} as {args.format} to {target}")
    print(f"serve it with: --backend {args.format} --model {args.out}")
    return 0


def health(args: argparse.Namespace) -> int:
    """Exit 0 when the service answers and every Executor behind it is ready (Jina's own check), else 1."""
    from jina import Client

    ready = Client(host=args.host, port=args.port, protocol=args.protocol).is_flow_ready(timeout=args.timeout)
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def show_options(args: argparse.Namespace) -> int:
    print(config_yaml() if args.format == "yaml" else markdown_table(), end="")
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
    add_arguments(embed, FOLDER_OPTIONS)
    embed.set_defaults(handler=embed_folder)

    compare = commands.add_parser("similarity", help="cosine similarity of two images")
    compare.add_argument("a")
    compare.add_argument("b")
    add_arguments(compare, FOLDER_OPTIONS)
    compare.set_defaults(handler=similarity)

    index = commands.add_parser("index", help="add every image under a folder to a search index")
    index.add_argument("data")
    index.add_argument("--db", required=True, help="index folder (created if missing)")
    add_arguments(index, FOLDER_OPTIONS)
    index.set_defaults(handler=index_folder)

    find = commands.add_parser("search", help="the indexed images most similar to a query image")
    find.add_argument("query")
    find.add_argument("--db", required=True)
    find.add_argument("-k", type=int, default=10, help="how many results")
    add_arguments(find, FOLDER_OPTIONS)
    find.set_defaults(handler=search)

    exporter = commands.add_parser("export", help="export the model to ONNX or TorchScript (a loadable folder)")
    exporter.add_argument("--format", choices=tuple(EXPORT_FILES), default="onnx")
    exporter.add_argument("--out", required=True, help="output folder")
    add_arguments(exporter, ["pretrained_model_name_or_path"])
    exporter.set_defaults(handler=export)

    server = commands.add_parser(
        "serve", help="serve the Executor (or the search Flow): options from --config, overridden by flags"
    )
    server.add_argument(
        "--config",
        default=None,
        help=f"Jina config whose 'with:' gives the options (default: {DEFAULT_CONFIG} when it exists here)",
    )
    server.add_argument("--port", type=int, default=51000)
    server.add_argument("--protocol", choices=("grpc", "http", "websocket"), default="grpc")
    server.add_argument("--search", action="store_true", help="serve the search Flow: /index and /search")
    server.add_argument("--db", default="index", help="index folder of the search Flow")
    server.add_argument("--monitoring", action="store_true", help="Prometheus metrics of the encoder")
    server.add_argument("--port-monitoring", type=int, default=9090, help="port of the encoder's /metrics")
    server.add_argument("--tracing", action="store_true", help="OpenTelemetry spans (OTLP over gRPC)")
    server.add_argument("--traces-exporter-host", default="127.0.0.1", help="OTLP collector host")
    server.add_argument("--traces-exporter-port", type=int, default=4317, help="OTLP collector port")
    add_arguments(server, defaults=False)
    server.set_defaults(handler=serve)

    checker = commands.add_parser("health", help="exit 0 if a served encoder and its Executors are ready")
    checker.add_argument("--host", default="127.0.0.1")
    checker.add_argument("--port", type=int, default=51000)
    checker.add_argument("--protocol", choices=("grpc", "http", "websocket"), default="grpc")
    checker.add_argument("--timeout", type=float, default=5.0, help="seconds")
    checker.set_defaults(handler=health)

    listing = commands.add_parser("options", help="print every option: config.yml's 'with:' or the README's table")
    listing.add_argument("--format", choices=("yaml", "markdown"), default="yaml")
    listing.set_defaults(handler=show_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (OptionError, ModelNotFoundError) as exc:  # the user's to fix: a message, not a traceback
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
