"""The served Flow: the encoder, optionally replicated, and the search Flow's indexer, optionally sharded.

``clip-image-encoder serve`` and the tests build it here, so that a replicated or sharded Flow is the
same Flow that users run. Replicas of the encoder share the cores (`runtime.configure_cpu_threads`)
and Jina's gateway retries a request on another replica when one dies. A sharded indexer keeps each
key in one shard and merges the shards' top k (`indexer`).
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

from clip_image_encoder.options import TEXT_ENCODER_OPTIONS, EncoderOptions
from clip_image_encoder.shutdown import stop_executors_in_order

if TYPE_CHECKING:
    from jina import Flow

STOP_ORDER = ("encoder", "text_encoder", "indexer")
"""Deployments in Flow order: each drains before the next stops, so answers still pass through."""


def build_flow(
    options: EncoderOptions,
    *,
    port: int,
    protocol: str = "grpc",
    search: bool = False,
    db: str = "index",
    replicas: int = 1,
    shards: int = 1,
    monitoring: bool = False,
    port_monitoring: int = 9090,
    tracing: bool = False,
    traces_exporter_host: str = "127.0.0.1",
    traces_exporter_port: int = 4317,
) -> Flow:
    """The encoder (``replicas`` processes); with ``search``, the indexer in ``shards`` parts behind it.

    When the checkpoint has a text tower, the search Flow also answers text queries: the text encoder sits
    between the two, embeds ``/search`` Documents that carry a text and no image, and passes the rest on.
    """
    from jina import Flow

    from clip_image_encoder.executor import CLIPImageEncoder

    observability: dict[str, Any] = {"tracing": tracing}
    if tracing:
        observability |= {"traces_exporter_host": traces_exporter_host, "traces_exporter_port": traces_exporter_port}
    flow = Flow(port=port, protocol=protocol, **observability).add(
        name="encoder",
        uses=CLIPImageEncoder,
        uses_with=options.as_dict(),
        replicas=replicas,
        monitoring=monitoring,
        port_monitoring=port_monitoring,
        **observability,
    )
    if search:
        from clip_image_encoder.executor import SEARCH_FLOW_REQUESTS, CLIPTextEncoder
        from clip_image_encoder.indexer import SHARDED_POLLING, ImageIndexer, ShardMerger
        from clip_image_encoder.text_encoding import has_text_tower

        if has_text_tower(options.pretrained_model_name_or_path):
            text_options = {name: value for name, value in options.as_dict().items() if name in TEXT_ENCODER_OPTIONS}
            flow = flow.add(
                name="text_encoder",
                uses=CLIPTextEncoder,
                uses_with=text_options,
                uses_requests=SEARCH_FLOW_REQUESTS,
                **observability,
            )

        sharding: dict[str, Any] = {}
        if shards > 1:
            sharding = {"shards": shards, "uses_after": ShardMerger, "polling": SHARDED_POLLING}
        flow = flow.add(
            name="indexer",
            uses=ImageIndexer,
            uses_with={"db": db, "stop_timeout_s": options.stop_timeout_s},
            **sharding,
        )
    return flow


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
