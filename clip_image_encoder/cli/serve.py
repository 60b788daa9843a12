"""``clip-image-encoder serve``: the Executor, or the search Flow, until SIGTERM or SIGINT; options from
``--config`` (``config.yml``), overridden by flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.cli.index import DB_HELP, add_index_argument
from clip_image_encoder.config.files import DEFAULT_CONFIG, serving_options
from clip_image_encoder.config.flags import add_arguments
from clip_image_encoder.config.options import OPTIONS
from clip_image_encoder.errors import OptionError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="serve the Executor (or the search Flow): options from --config, overridden by flags"
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"Jina config whose 'with:' gives the options (default: {DEFAULT_CONFIG} when it exists here)",
    )
    parser.add_argument("--port", type=int, default=51000)
    parser.add_argument("--protocol", choices=("grpc", "http", "websocket"), default="grpc")
    parser.add_argument("--search", action="store_true", help="serve the search Flow: /index and /search")
    parser.add_argument("--db", default="index", help=f"the search Flow's store: {DB_HELP}")
    add_index_argument(parser)
    parser.add_argument("--replicas", type=int, default=1, help="encoder processes (they share the cores)")
    parser.add_argument("--shards", type=int, default=1, help="parts of the search Flow's embedded store (db/shard-N)")
    parser.add_argument(
        "--indexer-replicas", type=int, default=1, help="stateless indexers in front of a Milvus server (--db http://)"
    )
    parser.add_argument("--monitoring", action="store_true", help="Prometheus metrics of the encoder")
    parser.add_argument("--port-monitoring", type=int, default=9090, help="port of the encoder's /metrics")
    parser.add_argument("--tracing", action="store_true", help="OpenTelemetry spans (OTLP over gRPC)")
    parser.add_argument("--traces-exporter-host", default="127.0.0.1", help="OTLP collector host")
    parser.add_argument("--traces-exporter-port", type=int, default=4317, help="OTLP collector port")
    add_arguments(parser, defaults=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clip_image_encoder.service.flow import Observability, build_flow, serve_until_stopped

    config = args.config if args.config is not None or not DEFAULT_CONFIG.is_file() else DEFAULT_CONFIG
    if config is not None and not Path(config).is_file():
        raise OptionError(f"config file {config} does not exist")
    given = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    options = serving_options(Path(config) if config else None, given)
    observability = Observability(
        monitoring=args.monitoring,
        port_monitoring=args.port_monitoring,
        tracing=args.tracing,
        traces_exporter_host=args.traces_exporter_host,
        traces_exporter_port=args.traces_exporter_port,
    )
    flow = build_flow(
        options,
        port=args.port,
        protocol=args.protocol,
        search=args.search,
        db=args.db,
        index=args.index,
        replicas=args.replicas,
        shards=args.shards,
        indexer_replicas=args.indexer_replicas,
        observability=observability,
    )
    serve_until_stopped(flow, options.stop_timeout_s)
    return 0
