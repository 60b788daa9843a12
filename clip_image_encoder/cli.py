"""The command line: embed a folder into a file, compare two images, index and search a folder, serve.

    clip-image-encoder embed DATA --out FILE --format csv|lightly_csv|torch|npy|parquet
    clip-image-encoder similarity A.jpg B.jpg
    clip-image-encoder index DATA --db DIR
    clip-image-encoder search QUERY.jpg --db DIR -k 10 [--html PAGE.html]
    clip-image-encoder search --text "a red bicycle" --db DIR
    clip-image-encoder duplicates DATA | --db DIR [--threshold T] [--out groups.csv|json] [--html PAGE.html]
    clip-image-encoder train DATA --method simclr|barlow_twins|swav --model MODEL --out DIR
    clip-image-encoder serve [--config config.yml] [--port 51000] [--search --db DIR]
    clip-image-encoder export --format onnx|torchscript --out DIR
    clip-image-encoder health [--port 51000]
    clip-image-encoder options [--format yaml|markdown]
    clip-image-encoder deploy kubernetes|docker-compose --out DIR [--gpu] [--replicas N] [--shards N]

Every command uses the same pipeline as the Executor, and its encoder flags come from the one
declaration of the options (`clip_image_encoder.options`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from tqdm import tqdm

from clip_image_encoder.backbones import model_identity
from clip_image_encoder.deployment import DEFAULT_FLOW, TARGETS, DeploymentError, export_manifests
from clip_image_encoder.embedding_files import FORMATS, EmbeddingTable, read_embeddings, write_embeddings
from clip_image_encoder.errors import EmbeddingError, IndexMismatchError, ModelNotFoundError, OptionError
from clip_image_encoder.exported import EXPORT_FILES
from clip_image_encoder.options import OPTIONS, EncoderOptions, add_arguments, config_yaml, markdown_table, spec
from clip_image_encoder.pipeline import EncodeResult, ImageEncoder, ImageItem
from clip_image_encoder.ray_engine import embed_on_ray, is_object_storage, list_object_storage
from clip_image_encoder.similarity import cosine_similarity
from clip_image_encoder.training.command import add_train_parser

if TYPE_CHECKING:
    from clip_image_encoder.vector_store import VectorIndex

CHECKPOINT_EVERY = 5000
"""``embed`` rewrites its output every this many new embeddings, so ``--resume`` loses little."""
DEFAULT_CONFIG = Path("config.yml")

FOLDER_OPTIONS = [name for name, option in OPTIONS.items() if not spec(option).serving_only]
"""The options of the commands that embed files (the others concern Documents and remote uris)."""


def _options_from(args: argparse.Namespace) -> EncoderOptions:
    return EncoderOptions(**{name: getattr(args, name) for name in OPTIONS if hasattr(args, name)})


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
    """Both engines feed this one writer: same files, errors report, checkpoints, resume and summary."""
    data, out = args.data, Path(args.out)
    on_object_storage = args.engine == "ray" and is_object_storage(data)
    if not on_object_storage and not Path(data).is_dir():
        return _fail(f"{data} is not a folder")
    if out.exists() and not (args.overwrite or args.resume):
        return _fail(f"{out} exists: pass --overwrite to replace it or --resume to add the missing files")
    table = read_embeddings(out, args.format) if args.resume and out.exists() else EmbeddingTable()
    done = set(table.filenames)
    names, vectors = list(table.filenames), list(table.embeddings)
    listed = list_object_storage(data) if on_object_storage else _relative_names(Path(data))
    todo = [name for name in listed if name not in done]
    options = _options_from(args)
    errors: list[tuple[str, str]] = []
    started = time.perf_counter()
    with (
        closing(EMBEDDING_ENGINES[args.engine](args, todo, options)) as results,
        tqdm(total=len(todo), unit="img", desc="embedding", disable=args.quiet) as progress,
    ):
        for name, result in results:
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


def _relative_names(folder: Path) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in list_images(folder)]


def _embed_locally(
    args: argparse.Namespace, names: list[str], options: EncoderOptions
) -> Iterator[tuple[str, EncodeResult]]:
    """The local engine: this process, the pipeline's decode threads and model thread."""
    paths = [Path(args.data) / name for name in names]
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        yield from zip(names, _encode_paths(encoder, paths, options), strict=True)


def _embed_on_ray(
    args: argparse.Namespace, names: list[str], options: EncoderOptions
) -> Iterator[tuple[str, EncodeResult]]:
    """The ray engine: the same pipeline in Ray Data actors, here or on the cluster RAY_ADDRESS names."""
    return embed_on_ray(
        args.data, names, options, args.ray_actors, args.ray_cpus_per_actor, progress_bars=not args.quiet
    )


EMBEDDING_ENGINES = {"local": _embed_locally, "ray": _embed_on_ray}
"""``embed --engine``: each yields ``(name relative to DATA, embedding | error)`` in the order of the names."""


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


def _open_index(db: str | Path, model_name: str | None = None) -> VectorIndex:
    """The index folder, claimed for ``model_name`` when given (lazy import: faiss is only needed here)."""
    from clip_image_encoder.vector_store import VectorIndex

    return VectorIndex(Path(db), model_name=model_name)


def _index_images(data: Path, index: VectorIndex, options: EncoderOptions, quiet: bool = False) -> tuple[int, int]:
    """Embed every image under ``data`` into ``index`` (keys: absolute paths), in chunks: (indexed, failed)."""
    paths = list_images(data)
    keys, vectors, failures = [], [], 0
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        results = _encode_paths(encoder, paths, options)
        progress = tqdm(zip(paths, results, strict=True), total=len(paths), unit="img", desc="indexing", disable=quiet)
        for path, result in progress:
            if isinstance(result, EmbeddingError):
                failures += 1
                progress.write(f"skipped {path}: {result}", file=sys.stderr)
                continue
            keys.append(str(path))
            vectors.append(result)
            if len(keys) == options.batch_size * 8:
                index.upsert(keys, np.stack(vectors))
                keys, vectors = [], []
        index.upsert(keys, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
    return len(paths) - failures, failures


def index_folder(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    if not data.is_dir():
        return _fail(f"{data} is not a folder")
    options = _options_from(args)
    with _open_index(args.db, model_identity(options.pretrained_model_name_or_path)) as index:
        indexed, failures = _index_images(data, index, options, args.quiet)
        print(f"indexed {indexed} images from {data}; {len(index)} in {args.db}; {failures} skipped")
    return 0


def _empty_index_message(db: str | Path) -> str:
    return f"the index in {db} is empty: add images with 'clip-image-encoder index DATA --db {db}'"


def search(args: argparse.Namespace) -> int:
    """The indexed images nearest to a query image (``QUERY``) or a text (``--text``), best first."""
    if (args.query is None) == (args.text is None):
        return _fail('give one query: an image file, or --text "words to search for"')
    if not Path(args.db).is_dir():
        return _fail(f"{args.db} holds no index: build one with 'clip-image-encoder index DATA --db {args.db}'")
    options = _options_from(args)
    with _open_index(args.db) as index:
        if len(index) == 0:
            return _fail(_empty_index_message(args.db))
        index.check_model(model_identity(options.pretrained_model_name_or_path))  # before loading any model
        query = _embed_text_query(args.text, options) if args.text is not None else _embed_image_query(args, options)
        if isinstance(query, EmbeddingError):
            return _fail(f"{args.text if args.text is not None else args.query}: {query}")
        matches = index.search(query, args.k)
    for rank, (key, score) in enumerate(matches, start=1):
        print(f"{rank:>3}  {score:.4f}  {key}")
    if args.html:
        from clip_image_encoder.pages import search_page, write_page

        query_image = None if args.query is None else Path(args.query)
        page = search_page(
            matches, query_image=query_image, query_text=args.text, model=index.model_name or "", db=str(args.db)
        )
        write_page(Path(args.html), page)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _embed_image_query(args: argparse.Namespace, options: EncoderOptions) -> EncodeResult:
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        (query,) = list(_encode_paths(encoder, [Path(args.query)], options))
    return query


def _embed_text_query(text: str, options: EncoderOptions) -> EncodeResult:
    """The text tower of the index's checkpoint (the same ``--model``): its embedding is comparable to images'."""
    from clip_image_encoder.text_encoding import TextEncoder

    (query,) = TextEncoder.from_pretrained(options.pretrained_model_name_or_path, options.device).encode([text])
    return query


def duplicates(args: argparse.Namespace) -> int:
    """Groups of near-duplicate images: of a folder (indexed into ``--db``, or a temporary index), or of ``--db``."""
    from clip_image_encoder.duplicates import find_duplicates, write_groups

    if args.data is None and args.db is None:
        return _fail("give a folder of images (DATA), or --db of an index built with 'clip-image-encoder index'")
    if args.data is not None and not Path(args.data).is_dir():
        return _fail(f"{args.data} is not a folder")
    if args.data is None and not Path(args.db).is_dir():
        return _fail(f"{args.db} holds no index: build one with 'clip-image-encoder index DATA --db {args.db}'")
    options = _options_from(args)
    with tempfile.TemporaryDirectory(prefix="duplicates-") as scratch:
        db = Path(args.db or scratch)
        model = model_identity(options.pretrained_model_name_or_path) if args.data is not None else None
        threshold = args.threshold
        if threshold is None and model is not None:  # before embedding the folder: fail fast without a default
            threshold = _default_threshold(model)
        with _open_index(db, model) as index:
            if args.data is not None:
                _index_images(Path(args.data).resolve(), index, options, args.quiet)
            if len(index) == 0:
                return _fail(_empty_index_message(db) if args.data is None else f"{args.data} holds no image")
            threshold = threshold if threshold is not None else _default_threshold(index.model_name)
            groups = find_duplicates(index, threshold, progress=not args.quiet)
            images = len(index)
            model_name = index.model_name or ""
    in_groups = sum(len(group.members) for group in groups)
    print(
        f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates ({in_groups} images) among "
        f"{images} images, at cosine >= {threshold}"
    )
    for number, group in enumerate(groups, start=1):
        print(f"group {number}: {len(group.members)} images, the most original first")
        for member in group.members:
            facts = member.facts
            size = f"{facts.width}x{facts.height}" if facts.width else "?"
            print(f"  {member.similarity:.4f}  {size:>11}  {member.key}")
    if args.out:
        write_groups(Path(args.out), groups, threshold=threshold, model=model_name)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        from clip_image_encoder.pages import duplicates_page, write_page

        source = str(args.data or args.db)
        write_page(Path(args.html), duplicates_page(groups, threshold=threshold, model=model_name, source=source))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _default_threshold(model_name: str | None) -> float:
    """The backbone's calibrated threshold (`Backbone.duplicate_threshold`); an `OptionError` where it has none."""
    from clip_image_encoder.backbones import backbone_of

    backbone = None
    if model_name is not None:
        with contextlib.suppress(ModelNotFoundError, ValueError):
            backbone = backbone_of(model_name)
    if backbone is None or backbone.duplicate_threshold is None:
        family = f"backbone {backbone.name!r}" if backbone else f"model {model_name!r}"
        raise OptionError(
            f"{family} has no calibrated duplicate threshold (no weights of it could be had to calibrate one): "
            "pass --threshold, or calibrate one on your images with benchmarks/duplicates_isc.py --model MODEL"
        )
    return backbone.duplicate_threshold


def serving_options(config: Path | None, given: dict[str, Any]) -> EncoderOptions:
    """The ``with:`` of a Jina config file (``config.yml``), overridden by the flags given on the command line."""
    with_block: dict[str, Any] = {}
    if config is not None:
        document = yaml.safe_load(config.read_text()) or {}
        with_block = document.get("with") or {}
    return EncoderOptions.from_mapping({**with_block, **given})


def serve(args: argparse.Namespace) -> int:
    from clip_image_encoder.serving import build_flow, serve_until_stopped

    config = args.config if args.config is not None or not DEFAULT_CONFIG.is_file() else DEFAULT_CONFIG
    if config is not None and not Path(config).is_file():
        return _fail(f"config file {config} does not exist")
    given = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    options = serving_options(Path(config) if config else None, given)
    flow = build_flow(
        options,
        port=args.port,
        protocol=args.protocol,
        search=args.search,
        db=args.db,
        replicas=args.replicas,
        shards=args.shards,
        monitoring=args.monitoring,
        port_monitoring=args.port_monitoring,
        tracing=args.tracing,
        traces_exporter_host=args.traces_exporter_host,
        traces_exporter_port=args.traces_exporter_port,
    )
    serve_until_stopped(flow, options.stop_timeout_s)
    return 0


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


def deploy(args: argparse.Namespace) -> int:
    """Jina's export of the search Flow, completed for a cluster (`clip_image_encoder.deployment`)."""
    try:
        written = export_manifests(
            args.target,
            Path(args.flow),
            Path(args.out),
            replicas=args.replicas,
            gpu=args.gpu,
            shards=args.shards,
            namespace=args.namespace,
        )
    except DeploymentError as exc:
        return _fail(str(exc))
    print("\n".join(f"wrote {path}" for path in written))
    return 0


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
    embed.add_argument("data", help="folder of images (searched recursively); with --engine ray also s3:// or gs://")
    embed.add_argument("--out", required=True, help="output file")
    embed.add_argument("--format", choices=FORMATS, default="csv")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output")
    embed.add_argument("--resume", action="store_true", help="keep an existing output and embed only the missing files")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.add_argument(
        "--engine",
        choices=tuple(EMBEDDING_ENGINES),
        default="local",
        help="local: this process; ray: Ray Data actors, on the cluster RAY_ADDRESS names or a new local one "
        "(pip install .[ray])",
    )
    embed.add_argument("--ray-actors", type=int, default=1, help="ray engine: encoders at once, each with the model")
    embed.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=1,
        help="ray engine: CPUs reserved for each actor, also its torch threads unless --num-threads is set",
    )
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
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(index, FOLDER_OPTIONS)
    index.set_defaults(handler=index_folder)

    find = commands.add_parser("search", help="the indexed images most similar to a query image or text")
    find.add_argument("query", nargs="?", help="query image file (or give --text)")
    find.add_argument("--text", help="a text query, embedded by the text tower of --model (CLIP, SigLIP)")
    find.add_argument("--db", required=True)
    find.add_argument("-k", type=int, default=10, help="how many results")
    find.add_argument("--html", help="also write the results as one self-contained page with thumbnails")
    add_arguments(find, FOLDER_OPTIONS)
    find.set_defaults(handler=search)

    twins = commands.add_parser("duplicates", help="groups of near-duplicate images, the most original first")
    twins.add_argument("data", nargs="?", help="folder of images (searched recursively)")
    twins.add_argument("--db", help="index folder: reuse it (without DATA), or add DATA to it and keep it")
    twins.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine similarity at or above which two images are near-duplicates (default: the backbone's "
        "calibrated one, see README)",
    )
    twins.add_argument("--out", help="also write the groups to a .csv or .json file")
    twins.add_argument("--html", help="also write the groups as one self-contained page with thumbnails")
    twins.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(twins, FOLDER_OPTIONS)
    twins.set_defaults(handler=duplicates)

    exporter = commands.add_parser("export", help="export the model to ONNX or TorchScript (a loadable folder)")
    exporter.add_argument("--format", choices=tuple(EXPORT_FILES), default="onnx")
    exporter.add_argument("--out", required=True, help="output folder")
    add_arguments(exporter, ["pretrained_model_name_or_path"])
    exporter.set_defaults(handler=export)

    add_train_parser(commands)

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
    server.add_argument("--replicas", type=int, default=1, help="encoder processes (they share the cores)")
    server.add_argument("--shards", type=int, default=1, help="parts of the search Flow's index (db/shard-N)")
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

    deployer = commands.add_parser("deploy", help="Kubernetes or docker-compose files of the search Flow")
    deployer.add_argument("target", choices=TARGETS)
    deployer.add_argument("--out", required=True, help="output folder (new or empty)")
    deployer.add_argument("--flow", default=str(DEFAULT_FLOW), help="the Flow of images to export")
    deployer.add_argument("--replicas", type=int, default=None, help="encoder replicas (default: the flow's)")
    deployer.add_argument(
        "--shards", type=int, default=None, help="indexer shards, each with its own index claim (default: the flow's)"
    )
    deployer.add_argument("--gpu", action="store_true", help="the encoder's GPU image, one nvidia.com/gpu per replica")
    deployer.add_argument("--namespace", default="default", help="Kubernetes namespace (create it first)")
    deployer.set_defaults(handler=deploy)

    listing = commands.add_parser("options", help="print every option: config.yml's 'with:' or the README's table")
    listing.add_argument("--format", choices=("yaml", "markdown"), default="yaml")
    listing.set_defaults(handler=show_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (OptionError, ModelNotFoundError, IndexMismatchError) as exc:  # the user's to fix: a message
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
