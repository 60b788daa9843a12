"""What the pipeline reports while it works: stage timings, batch sizes, outcomes, and trace spans.

`PipelineMetrics` is the interface, and reports nowhere (the command line uses it as it is); the
service's `service.metrics.ServiceMetrics` reports through Prometheus and OpenTelemetry. Metric names:

- ``clip_encoder_stage_seconds{stage}``: ``decode`` and ``preprocess`` per image (decode threads),
  ``normalize`` and ``forward`` per batch (model thread);
- ``clip_encoder_batch_size``: images per forward pass;
- ``clip_encoder_embedded_total``, ``clip_encoder_failed_total{reason}``: inputs by outcome, failures
  by class (``undecodable``, ``too_large``, ``refused_uri``, ``unreadable_uri``, ``no_image``,
  ``invalid_input``, ``model``);
- ``clip_encoder_model_info{model, backend, device, dtype, embedding_dim}``: always 1;
- served only (batching across requests, `service.batching`): ``clip_encoder_queue_seconds`` (each request's
  wait for its batch), ``clip_encoder_joined_requests`` and ``clip_encoder_joined_documents`` (per joined
  batch), ``clip_encoder_overloaded_total`` (requests refused by the bound).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class PipelineMetrics:
    """Reports nowhere; `ServiceMetrics` reports to Prometheus and OpenTelemetry."""

    def trace_context(self) -> Any:
        """The caller's trace context, to parent the spans of work done on other threads."""
        return None

    @contextlib.contextmanager
    def stage(self, name: str, parent: Any = None) -> Iterator[None]:
        yield

    def batch(self, size: int) -> None:
        pass

    def outcome(self, result: object) -> None:
        """One input's result: an embedding, or the `EmbeddingError` it got."""

    def queue_wait(self, seconds: float) -> None:
        """How long one request waited for the batch that took it."""

    def joined(self, requests: int, documents: int) -> None:
        """One joined batch: how many requests, and how many of their inputs, share it."""

    def overloaded(self) -> None:
        """One request refused because the queue was full."""
