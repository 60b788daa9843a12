"""Batching across requests: the inputs of concurrent requests join one forward pass.

Many clients each sending one image (or one text) is a search service's real traffic; a forward pass
of one input runs at a fraction of a full batch's throughput (a quarter on cpu, far less on a GPU).
`RequestBatcher` queues each request's inputs and runs them in joined batches:

- a batch takes the queued requests in arrival order, whole, up to ``batch_size`` inputs; only requests
  whose ``key`` is equal join (what the model pass depends on: the preprocessing mode, the batch size);
  what differs between them afterwards (normalize, embed_dim, ...) is applied per request by the caller;
- when the model is free and fewer than ``batch_size`` inputs wait, the batch waits up to ``wait_s`` for
  more, but only while requests come concurrently (the last batch joined several): a lone client never
  waits, and a crowd fills the batch, mostly while the model is busy with the one before;
- ``concurrency`` batches run at once: 1 on cpu, where the model already takes every core; 2 on cuda,
  so that the next batch decodes while the model runs this one;
- the queue is bounded: once ``max_queued`` inputs wait, a request is refused at once with an
  `OverloadedError` (retry later), so memory stays bounded and the queued requests are still answered.
  Below the bound a request is taken whatever its size (its inputs are in memory already), so a large
  request is never refused for ever; a cancelled request leaves the queue.

Each request gets back one result per input, in its order; an input's error stays its own, and an
exception of a whole batch (a bug) fails the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clip_image_encoder.encoding.metrics import PipelineMetrics
from clip_image_encoder.errors import OverloadedError

RunBatch = Callable[[Hashable, list[Any]], list[Any]]
"""``(key, inputs) -> one result per input``: runs on a worker thread."""


@dataclass
class _Request:
    key: Hashable
    batch_size: int
    inputs: Sequence[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    """The submitter's context (its trace span): the batch it leads runs in it, so the spans of the pass are
    the request's children, not the children of whichever request started the consumer."""


class RequestBatcher:
    """Queues the inputs of requests and runs them in joined batches (see the module's docstring)."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        wait_s: float,
        max_queued: int,
        concurrency: int = 1,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.wait_s = wait_s
        self.max_queued = max_queued
        self.metrics = metrics or PipelineMetrics()
        self.queued = 0
        """Inputs waiting for a batch (not those in one)."""
        self._pending: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._consumer: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False
        self._last_joined = 0
        """Requests in the last batch: more than one means concurrent clients, whose next requests are worth
        waiting for."""

    async def submit(self, inputs: Sequence[Any], key: Hashable, batch_size: int) -> list[Any]:
        """One result per input, in order, once the batches that hold them have run; ``key`` says which
        requests may share a batch, ``batch_size`` how many inputs it holds at most."""
        if not inputs:
            return []
        self._start()
        if self._closed or self.queued >= self.max_queued:
            self.metrics.overloaded()
            reason = "stopping" if self._closed else f"{self.queued} inputs are already queued"
            raise OverloadedError(
                f"overloaded: {reason} (max_queued_documents={self.max_queued}); retry later, or add replicas"
            )
        request = _Request(key, batch_size, inputs, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self.queued += len(inputs)
        self._arrived.set()
        try:
            return await request.future
        except asyncio.CancelledError:  # the client went away: its inputs leave the queue, if still there
            if request in self._pending:
                self._pending.remove(request)
                self.queued -= len(inputs)
            raise

    def _start(self) -> None:
        """The consumer, on the serving event loop, from the first request (again on a new loop: each
        ``asyncio.run`` of a caller that drives the Executor itself has one)."""
        if self._consumer is None or self._consumer.get_loop() is not asyncio.get_running_loop():
            self._pending.clear()  # a finished loop's requests are long answered
            self.queued = 0
            self._arrived = asyncio.Event()
            self._slots = asyncio.Semaphore(self._concurrency)
            self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        while True:
            await self._slots.acquire()
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            first = self._pending[0]
            await self._gather(first)
            batch = self._take(first.key, first.batch_size)
            self._last_joined = len(batch)
            task = asyncio.get_running_loop().create_task(self._run(batch), context=batch[0].context)
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self, first: _Request) -> None:
        """With the model free and concurrent clients: wait up to ``wait_s`` for the batch of ``first`` to fill."""
        if self._last_joined < 2:
            return
        deadline = time.perf_counter() + self.wait_s
        while self._waiting_for(first.key) < first.batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _waiting_for(self, key: Hashable) -> int:
        return sum(len(request.inputs) for request in self._pending if request.key == key)

    def _take(self, key: Hashable, batch_size: int) -> list[_Request]:
        """The oldest requests of ``key``, whole, up to ``batch_size`` inputs (always at least one request)."""
        taken, size, kept = [], 0, deque()
        while self._pending:
            request = self._pending.popleft()
            if request.key == key and (not taken or size + len(request.inputs) <= batch_size):
                taken.append(request)
                size += len(request.inputs)
            else:
                kept.append(request)
        self._pending = kept
        self.queued -= size
        return taken

    async def _run(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        for request in batch:
            self.metrics.queue_wait(started - request.queued_at)
        inputs = [item for request in batch for item in request.inputs]
        self.metrics.joined(len(batch), len(inputs))
        try:
            results = await asyncio.to_thread(self.run_batch, batch[0].key, inputs)
        except Exception as exc:  # a bug must fail this batch's requests, not the service
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        else:
            offset = 0
            for request in batch:
                if not request.future.done():  # a cancelled request (client gone) takes nothing
                    request.future.set_result(results[offset : offset + len(request.inputs)])
                offset += len(request.inputs)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Stop taking batches (from any thread): later requests are refused; those still queued (none after a
        graceful stop's drain) fail."""
        self._closed = True
        if self._consumer is None or self._consumer.get_loop().is_closed():
            return
        self._consumer.get_loop().call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        self._consumer.cancel()
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(OverloadedError("the encoder is stopping; retry on another replica"))
        self._pending.clear()
        self.queued = 0
