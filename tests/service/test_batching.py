"""Batching across requests: Documents of concurrent requests share forward passes, each request keeps its own
options, errors and order, a lone client does not wait, and a full queue refuses at once."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from docarray import DocList
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clip_image_encoder.errors import OverloadedError
from clip_image_encoder.service.batching import RequestBatcher
from clip_image_encoder.service.documents import ImageDocument, TextDocument
from clip_image_encoder.service.executors import CLIPImageEncoder, CLIPTextEncoder
from clip_image_encoder.service.metrics import ServiceMetrics


def forward_sizes(monkeypatch, model) -> list[int]:
    """Record the size of every forward pass the model makes."""
    sizes: list[int] = []
    embed = model.embed

    def counted(pixel_values):
        sizes.append(len(pixel_values))
        return embed(pixel_values)

    monkeypatch.setattr(model, "embed", counted)
    return sizes


async def concurrently(executor, *requests: tuple[list, dict]) -> list:
    """The requests sent at once, as a crowd of clients would: each ``(documents, parameters)``."""
    calls = [executor.encode(docs=DocList[type(docs[0])](docs), parameters=params) for docs, params in requests]
    return await asyncio.gather(*calls, return_exceptions=True)


def test_concurrent_requests_share_one_forward_pass_each_with_its_own_options_and_errors(executor, photos, monkeypatch):
    sizes = forward_sizes(monkeypatch, executor.encoder.model)
    cat, coffee, rocket, china = (photos[name] for name in ("chelsea", "coffee", "rocket", "china"))
    normalized, truncated, quantized = asyncio.run(
        concurrently(
            executor,
            ([ImageDocument(tensor=cat), ImageDocument(tensor=coffee)], {"normalize": True}),
            ([ImageDocument(tensor=rocket), ImageDocument(bytes_=b"not an image")], {"embed_dim": 8}),
            ([ImageDocument(tensor=china)], {"quantize": True}),
        )
    )
    assert sizes == [4]  # the broken image failed in decoding: four images, one pass
    assert [np.linalg.norm(doc.embedding) for doc in normalized] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert truncated[0].embedding.shape == (8,) and truncated[0].error is None
    assert truncated[1].embedding is None and "not a decodable image" in truncated[1].error
    assert quantized[0].embedding.dtype == np.int8
    (alone,) = asyncio.run(concurrently(executor, ([ImageDocument(tensor=cat)], {"normalize": True})))
    assert np.allclose(alone[0].embedding, normalized[0].embedding, atol=1e-5)  # joined or alone, the same numbers


def test_requests_that_need_another_pass_do_not_join(executor, photos, monkeypatch):
    """The preprocessing mode and the batch size shape the pass itself: such requests run in passes of their own."""
    sizes = forward_sizes(monkeypatch, executor.encoder.model)
    cat = photos["chelsea"]
    asyncio.run(
        concurrently(
            executor,
            ([ImageDocument(tensor=cat)], {}),
            ([ImageDocument(tensor=cat)], {"preprocessing": "fast"}),
            ([ImageDocument(tensor=cat), ImageDocument(tensor=cat)], {"batch_size": 1}),
            ([ImageDocument(tensor=cat)], {}),
        )
    )
    assert sorted(sizes) == [1, 1, 1, 2]


def test_a_full_queue_refuses_a_request_at_once_and_answers_the_queued(tiny_model_dir, photos):
    encoder = CLIPImageEncoder(pretrained_model_name_or_path=str(tiny_model_dir), max_queued_documents=3)
    registry = CollectorRegistry()
    encoder.batcher.metrics = ServiceMetrics(registry, None, {"model": "tiny"})
    try:
        cat = photos["chelsea"]
        answered, overloaded = asyncio.run(
            concurrently(
                encoder,
                ([ImageDocument(tensor=cat)] * 3, {}),
                ([ImageDocument(tensor=cat)], {}),
            )
        )
    finally:
        encoder.close()
    assert all(doc.error is None for doc in answered)
    assert isinstance(overloaded, OverloadedError)
    assert "overloaded: 3 inputs are already queued (max_queued_documents=3); retry later" in str(overloaded)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples["clip_encoder_overloaded_total"] == 1
    assert samples["clip_encoder_joined_documents_sum"] == 3


def test_concurrent_text_queries_share_one_pass(clip_dir, monkeypatch):
    encoder = CLIPTextEncoder(pretrained_model_name_or_path=str(clip_dir), device="cpu")
    calls: list[int] = []
    embed = encoder.encoder.embed
    monkeypatch.setattr(encoder.encoder, "embed", lambda texts: calls.append(len(texts)) or embed(texts))
    try:
        plain, unit, empty = asyncio.run(
            concurrently(
                encoder,
                ([TextDocument(text="a cat")], {}),
                ([TextDocument(text="a cup of coffee")], {"normalize": True}),
                ([TextDocument(text="   ")], {}),
            )
        )
    finally:
        encoder.close()
    assert calls == [2]
    assert plain[0].error is None and np.linalg.norm(unit[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert "empty" in empty[0].error


def echo_batches(batches: list[list[int]]):
    def run(key, inputs):
        batches.append(list(inputs))
        time.sleep(0.05)  # the model is busy: the next requests queue
        return [value * 10 for value in inputs]

    return run


def test_each_request_gets_its_own_results_in_order():
    batches: list[list[int]] = []
    batcher = RequestBatcher(echo_batches(batches), wait_s=0.0, max_queued=100)

    async def crowd():
        return await asyncio.gather(*(batcher.submit([i, i + 1, i + 2], "key", 9) for i in range(0, 30, 3)))

    results = asyncio.run(crowd())
    assert results == [[10 * i, 10 * (i + 1), 10 * (i + 2)] for i in range(0, 30, 3)]
    assert batches == [list(range(0, 9)), list(range(9, 18)), list(range(18, 27)), [27, 28, 29]]  # whole requests


def test_a_lone_client_never_waits_and_a_crowd_does():
    batches: list[list[int]] = []
    batcher = RequestBatcher(echo_batches(batches), wait_s=0.5, max_queued=100)

    async def lone_then_crowd() -> tuple[float, float]:
        started = time.perf_counter()
        for value in range(3):  # one client, one request after the other
            await batcher.submit([value], "key", 32)
        lone = time.perf_counter() - started
        await asyncio.gather(*(batcher.submit([value], "key", 4) for value in range(8)))
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit([value], "key", 4) for value in range(3)))  # fewer than a batch
        return lone, time.perf_counter() - started

    lone, crowd_short_of_a_batch = asyncio.run(lone_then_crowd())
    assert lone < 3 * 0.05 + 0.2  # three passes of 50 ms, no 500 ms wait
    assert crowd_short_of_a_batch >= 0.5  # concurrent clients: the pass waited for a fourth


def test_below_the_bound_a_request_of_any_size_is_taken():
    """The bound keeps memory from growing with the queue; it must not refuse a large request for ever."""
    batcher = RequestBatcher(echo_batches([]), wait_s=0.0, max_queued=2)

    async def one_queued_then_a_large_one():
        return await asyncio.gather(batcher.submit([1], "key", 32), batcher.submit([2, 3, 4, 5], "key", 32))

    assert asyncio.run(one_queued_then_a_large_one()) == [[10], [20, 30, 40, 50]]


def test_a_cancelled_request_leaves_the_queue():
    batcher = RequestBatcher(echo_batches([]), wait_s=0.0, max_queued=100)

    async def cancel_one():
        running = asyncio.ensure_future(batcher.submit([1], "key", 32))
        await asyncio.sleep(0.01)  # the model is busy with it
        gone = asyncio.ensure_future(batcher.submit([2, 3], "key", 32))
        await asyncio.sleep(0)
        queued_before = batcher.queued
        gone.cancel()
        await asyncio.sleep(0)
        return await running, queued_before, batcher.queued

    assert asyncio.run(cancel_one()) == ([10], 2, 0)


def test_a_closed_batcher_refuses_new_requests():
    batcher = RequestBatcher(echo_batches([]), wait_s=0.0, max_queued=100)
    batcher.close()
    with pytest.raises(OverloadedError, match="overloaded: stopping"):
        asyncio.run(batcher.submit([1], "key", 32))


def test_a_batch_runs_in_the_context_of_the_request_that_leads_it():
    """Trace spans of a pass are children of a request's own span, not of whichever request came first."""
    import contextvars

    caller = contextvars.ContextVar("caller", default=None)
    seen: list[str] = []

    def run(key, inputs):
        seen.append(caller.get())
        return inputs

    batcher = RequestBatcher(run, wait_s=0.0, max_queued=100)

    async def as_caller(name: str) -> list:
        caller.set(name)
        return await batcher.submit([name], "key", 32)

    async def one_after_the_other():
        await asyncio.create_task(as_caller("first"))
        await asyncio.create_task(as_caller("second"))

    asyncio.run(one_after_the_other())
    assert seen == ["first", "second"]
