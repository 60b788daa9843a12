"""The search Flow, described once: its Executors in order, how each is bound, sharded and deployed.

`SEARCH_FLOW` is the one description. ``clip-image-encoder serve`` builds its Flow from it (`build_flow`),
the graceful stop follows its order (`STOP_ORDER`), and ``flow.yml``, ``deploy/flow.yml`` and the
deployment files (`service.deploy`) name its Executors; tests check the YAML files against it.

Replicas of the encoder share the cores (`models.devices.configure_cpu_threads`) and Jina's gateway
retries a request on another replica when one dies. A sharded indexer keeps each key in one shard and
merges the shards' top k (`service.indexer`).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clip_image_encoder.config.options import TEXT_ENCODER_OPTIONS, EncoderOptions
from clip_image_encoder.errors import OptionError
from clip_image_encoder.service.shutdown import stop_executors_in_order

if TYPE_CHECKING:
    from jina import Flow


@dataclass(frozen=True)
class FlowExecutor:
    """One Executor of the search Flow."""

    name: str
    """Its deployment name (``--name``), by which the stop, the exporter and the deployment files know it."""
    executor: str
    """Its class, as ``executor.py`` exports it."""
    config: str
    """Its Jina config file, which ``flow.yml`` uses."""
    image: str | None = None
    """Its container image in ``deploy/flow.yml``; None: not deployed (Jina's exporter starts every container
    with ``--uses config.yml``, so an Executor with another config needs an image of its own)."""
    uses_requests: dict[str, str] = field(default_factory=dict)
    """Endpoints bound to methods other than its own ``@requests``."""
    needs_text_tower: bool = False
    """In the Flow only when the checkpoint has a text tower."""
    sharded_polling: dict[str, str] = field(default_factory=dict)
    """Its ``polling`` when sharded (every shard sees every request); empty: never sharded."""
    merger: str | None = None
    """The Executor that merges its shards' answers (``uses_after``), when sharded."""


ENCODER = FlowExecutor(
    "encoder", "CLIPImageEncoder", "config.yml", image="clip-image-encoder", uses_requests={"/delete": "pass_keys_on"}
)
TEXT_ENCODER = FlowExecutor(
    "text_encoder",
    "CLIPTextEncoder",
    "text_config.yml",
    # There every Executor takes the image encoder's schema, `ImageDocument` (Jina checks that each Executor's
    # output schema is the next one's input), and only the indexer may name /search: Jina 3.34's gateway fails
    # when two Executors in a row bind one endpoint explicitly. So the text queries are embedded on the default
    # endpoint, and /index passes through.
    uses_requests={"/default": "encode_text_queries", "/index": "pass_images_on", "/delete": "pass_images_on"},
    needs_text_tower=True,
)
INDEXER = FlowExecutor(
    "indexer",
    "ImageIndexer",
    "indexer.yml",
    image="clip-image-encoder-indexer",
    sharded_polling={"/index": "ALL", "/search": "ALL", "/delete": "ALL"},
    merger="ShardMerger",
)
SEARCH_FLOW: tuple[FlowExecutor, ...] = (ENCODER, TEXT_ENCODER, INDEXER)
STOP_ORDER = tuple(executor.name for executor in SEARCH_FLOW)
"""Deployments in Flow order: each drains before the next stops, so answers still pass through."""


@dataclass(frozen=True)
class Observability:
    """``serve``'s monitoring and tracing flags, as Jina takes them."""

    monitoring: bool = False
    port_monitoring: int = 9090
    tracing: bool = False
    traces_exporter_host: str = "127.0.0.1"
    traces_exporter_port: int = 4317

    def tracing_arguments(self) -> dict[str, Any]:
        if not self.tracing:
            return {"tracing": False}
        return {
            "tracing": True,
            "traces_exporter_host": self.traces_exporter_host,
            "traces_exporter_port": self.traces_exporter_port,
        }


def build_flow(
    options: EncoderOptions,
    *,
    port: int,
    protocol: str = "grpc",
    search: bool = False,
    db: str = "index",
    index: str | None = None,
    replicas: int = 1,
    shards: int = 1,
    indexer_replicas: int = 1,
    observability: Observability | None = None,
) -> Flow:
    """The encoder (``replicas`` processes); with ``search``, the rest of `SEARCH_FLOW` behind it: the indexer
    in ``shards`` parts on an embedded store, or ``indexer_replicas`` stateless ones on a Milvus server; the text
    encoder when the checkpoint has a text tower."""
    from jina import Flow

    check_indexer_scale(db, shards, indexer_replicas)

    observability = observability or Observability()
    tracing = observability.tracing_arguments()
    classes = _executor_classes()
    flow = Flow(port=port, protocol=protocol, **tracing)
    for step in SEARCH_FLOW if search else (ENCODER,):
        if step.needs_text_tower and not _has_text_tower(options):
            continue
        arguments: dict[str, Any] = {"uses_with": _uses_with(step, options, db, index), **tracing}
        if step.uses_requests:
            arguments["uses_requests"] = step.uses_requests
        if step is ENCODER:
            arguments |= {
                "replicas": replicas,
                "monitoring": observability.monitoring,
                "port_monitoring": observability.port_monitoring,
            }
        if step is INDEXER and indexer_replicas > 1:
            arguments["replicas"] = indexer_replicas
        if step.sharded_polling and shards > 1:
            arguments |= {"shards": shards, "uses_after": classes[step.merger], "polling": step.sharded_polling}
        flow = flow.add(name=step.name, uses=classes[step.executor], **arguments)
    return flow


def check_indexer_scale(db: str, shards: int, replicas: int) -> None:
    """An embedded store is one process's folder: it scales by shards. A Milvus server shards itself: the
    indexer in front of it scales by replicas."""
    from clip_image_encoder.search.stores import is_server_uri

    if is_server_uri(db) and shards > 1:
        raise OptionError(f"{db} is a Milvus server, which shards itself: replicate the indexer instead of sharding it")
    if not is_server_uri(db) and replicas > 1:
        raise OptionError(
            f"the embedded store {db} is a folder that one process owns: shard it (--shards), or put the "
            "embeddings in a Milvus server (--db http://HOST:19530) to replicate the indexer"
        )


def _uses_with(step: FlowExecutor, options: EncoderOptions, db: str, index: str | None) -> dict[str, Any]:
    if step is INDEXER:
        return {"db": db, "index": index, "stop_timeout_s": options.stop_timeout_s}
    if step is TEXT_ENCODER:
        return {name: value for name, value in options.as_dict().items() if name in TEXT_ENCODER_OPTIONS}
    return options.as_dict()


def _has_text_tower(options: EncoderOptions) -> bool:
    from clip_image_encoder.encoding.texts import has_text_tower

    return has_text_tower(options.pretrained_model_name_or_path)


def _executor_classes() -> dict[str, type]:
    from clip_image_encoder.service.executors import CLIPImageEncoder, CLIPTextEncoder
    from clip_image_encoder.service.indexer import ImageIndexer, ShardMerger

    return {cls.__name__: cls for cls in (CLIPImageEncoder, CLIPTextEncoder, ImageIndexer, ShardMerger)}


def serve_until_stopped(flow: Flow, stop_timeout_s: float) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully: the Executors drain in Flow order, then the gateway."""
    stop = _event_set_by_stop_signals()
    with flow:
        while not stop.wait(0.5):  # a timeout: the signal may land on another thread; this one runs its handler
            pass
        # Leaving `with` closes the gateway first, which cancels the calls in flight: drain the Executors before.
        stop_executors_in_order(STOP_ORDER, stop_timeout_s + 5)


def _event_set_by_stop_signals() -> threading.Event:
    """Ctrl+C, docker stop and Kubernetes (SIGINT, SIGTERM) all stop the same way: in order, answering first.

    Without this, SIGTERM killed this process alone and left the Flow's processes serving.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop
