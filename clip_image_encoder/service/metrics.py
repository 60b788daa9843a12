"""The served encoder's metrics and spans, through what Jina gives a served Executor: the Prometheus
registry of ``--monitoring`` (scraped on ``--port-monitoring``) and the OpenTelemetry tracer of ``--tracing``.
The metric names are listed in `encoding.metrics`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context

from clip_image_encoder.encoding.metrics import PipelineMetrics
from clip_image_encoder.errors import EmbeddingError

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics(PipelineMetrics):
    """Prometheus metrics on Jina's registry (None without ``--monitoring``) and spans on Jina's tracer."""

    def __init__(self, registry: Any, tracer: Any, model_info: dict[str, str]) -> None:
        self._tracer = tracer
        self._prometheus = registry is not None
        if not self._prometheus:
            return
        from prometheus_client import Counter, Gauge, Histogram

        self._stage_seconds = Histogram(
            "clip_encoder_stage_seconds",
            "Time of one pipeline stage: decode and preprocess per image, normalize and forward per batch",
            ["stage"],
            registry=registry,
        )
        self._batch_size = Histogram(
            "clip_encoder_batch_size", "Images per forward pass", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self._embedded = Counter("clip_encoder_embedded", "Inputs embedded", registry=registry)
        self._failed = Counter(
            "clip_encoder_failed", "Inputs that got an error, by class", ["reason"], registry=registry
        )
        info = Gauge("clip_encoder_model_info", "The served model (value 1)", list(model_info), registry=registry)
        info.labels(**model_info).set(1)
        self._queue_seconds = Histogram(
            "clip_encoder_queue_seconds", "Time a request waited for the joined batch that took it", registry=registry
        )
        self._joined_requests = Histogram(
            "clip_encoder_joined_requests", "Requests per joined batch", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self._joined_documents = Histogram(
            "clip_encoder_joined_documents", "Inputs per joined batch", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self._overloaded = Counter(
            "clip_encoder_overloaded", "Requests refused because the queue was full", registry=registry
        )

    def trace_context(self) -> Any:
        return otel_context.get_current() if self._tracer is not None else None

    @contextlib.contextmanager
    def stage(self, name: str, parent: Any = None) -> Iterator[None]:
        started = time.perf_counter()
        span = (
            self._tracer.start_as_current_span(f"clip_encoder.{name}", context=parent)
            if self._tracer is not None
            else contextlib.nullcontext()
        )
        try:
            with span:
                yield
        finally:  # a failed decode took its time too
            if self._prometheus:
                self._stage_seconds.labels(name).observe(time.perf_counter() - started)

    def batch(self, size: int) -> None:
        if self._prometheus:
            self._batch_size.observe(size)

    def outcome(self, result: object) -> None:
        if not self._prometheus:
            return
        if isinstance(result, EmbeddingError):
            self._failed.labels(result.reason).inc()
        else:
            self._embedded.inc()

    def queue_wait(self, seconds: float) -> None:
        if self._prometheus:
            self._queue_seconds.observe(seconds)

    def joined(self, requests: int, documents: int) -> None:
        if self._prometheus:
            self._joined_requests.observe(requests)
            self._joined_documents.observe(documents)

    def overloaded(self) -> None:
        if self._prometheus:
            self._overloaded.inc()
