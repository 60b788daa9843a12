"""``clip-image-encoder deploy kubernetes|docker-compose --out DIR``: Jina's export of the search Flow,
completed for a cluster (`service.deploy`). ``--db http://HOST:19530`` puts the index in a Milvus server:
the indexer then holds no volume and is replicated (``--indexer-replicas``) instead of sharded."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_image_encoder.service.deploy import (
    DEFAULT_FLOW,
    DEFAULT_INDEXER_REPLICAS,
    MILVUS_DB,
    MILVUS_SECRET,
    TARGETS,
    export_manifests,
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("deploy", help="Kubernetes or docker-compose files of the search Flow")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--flow", default=str(DEFAULT_FLOW), help="the Flow of images to export")
    parser.add_argument("--replicas", type=int, default=None, help="encoder replicas (default: the flow's)")
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="indexer shards of the embedded store, each with its own index claim (default: the flow's)",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="the indexer's store (default: the flow's folder, on a volume): a Milvus server "
        f"http://HOST:19530[/COLLECTION], token from MILVUS_TOKEN (Kubernetes: the Secret {MILVUS_SECRET!r})",
    )
    parser.add_argument(
        "--indexer-replicas",
        type=int,
        default=None,
        help=f"stateless indexers in front of the Milvus server of --db (default {DEFAULT_INDEXER_REPLICAS})",
    )
    parser.add_argument(
        "--with-milvus",
        action="store_true",
        help=f"docker-compose: also a Milvus standalone service, and --db {MILVUS_DB} by default",
    )
    parser.add_argument("--gpu", action="store_true", help="the encoder's GPU image, one nvidia.com/gpu per replica")
    parser.add_argument("--namespace", default="default", help="Kubernetes namespace (create it first)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    written = export_manifests(
        args.target,
        Path(args.flow),
        Path(args.out),
        replicas=args.replicas,
        gpu=args.gpu,
        shards=args.shards,
        namespace=args.namespace,
        db=args.db,
        indexer_replicas=args.indexer_replicas,
        with_milvus=args.with_milvus,
    )
    print("\n".join(f"wrote {path}" for path in written))
    return 0
