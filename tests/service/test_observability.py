"""Metrics on Jina's --monitoring port and trace spans per pipeline stage."""

from __future__ import annotations

import urllib.request

import numpy as np
from docarray import DocList
from helpers import free_port
from jina import Flow
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder
from clip_image_encoder.service.metrics import ServiceMetrics


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text exposition as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_answers_with_stage_timings_and_counters(tiny_model_dir, photos):
    port, metrics_port = free_port(), free_port()
    flow = Flow(port=port).add(
        uses=CLIPImageEncoder,
        uses_with={"pretrained_model_name_or_path": str(tiny_model_dir)},
        monitoring=True,
        port_monitoring=metrics_port,
    )
    docs = [ImageDocument(tensor=photos["coffee"]), ImageDocument(bytes_=b"broken"), ImageDocument(url="/etc/passwd")]
    with flow:
        flow.post("/", inputs=DocList[ImageDocument](docs), return_type=DocList[ImageDocument])
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10) as response:
            status, text = response.status, response.read().decode()
    assert status == 200
    found = samples(text)
    assert found[("clip_encoder_embedded_total", ())] == 1
    assert found[("clip_encoder_failed_total", (("reason", "undecodable"),))] == 1
    assert found[("clip_encoder_failed_total", (("reason", "refused_uri"),))] == 1
    for stage, count in (("decode", 3), ("preprocess", 1), ("normalize", 1), ("forward", 1)):
        assert found[("clip_encoder_stage_seconds_count", (("stage", stage),))] == count, stage
    assert found[("clip_encoder_batch_size_count", ())] == 1
    info = [labels for (name, labels), value in found.items() if name == "clip_encoder_model_info" and value == 1]
    assert dict(info[0])["embedding_dim"] == "16" and dict(info[0])["device"] == "cpu"


def test_every_stage_is_a_span_under_the_callers_span(tiny_model_dir, photos):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    model = load_model(str(tiny_model_dir), device="cpu")
    with ImageEncoder(model) as encoder:
        encoder.metrics = ServiceMetrics(CollectorRegistry(), tracer, {"model": "tiny"})
        with tracer.start_as_current_span("request") as request:
            results = list(encoder.encode([photos["astronaut"], photos["rocket"]], EncoderOptions(batch_size=2)))
    assert all(isinstance(result, np.ndarray) for result in results)
    spans = exporter.get_finished_spans()
    names = sorted(span.name for span in spans if span.name != "request")
    assert names == sorted(
        ["clip_encoder.decode"] * 2
        + ["clip_encoder.preprocess"] * 2
        + ["clip_encoder.normalize", "clip_encoder.forward"]
    )
    request_id = request.get_span_context().span_id
    assert all(span.parent.span_id == request_id for span in spans if span.name != "request")
