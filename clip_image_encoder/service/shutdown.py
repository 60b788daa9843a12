"""A graceful stop for a served Executor: requests in flight are answered before the process ends.

Jina's worker runtime stops on SIGTERM or SIGINT by closing the Executor and then its gRPC server
with no grace, which cuts requests in flight. `drain_before_stopping` puts a handler in front of
Jina's: it waits until no request has been in flight for `SETTLE_S` (requests still on their way
from a gateway are answered too), at most ``grace_s`` seconds, then runs Jina's own stop. A
second signal of the same kind stops at once.

`die_with_parent` makes the worker process stop, gracefully, when the process that started it dies:
``jina executor``'s parent has no SIGTERM handler, and without this its worker kept serving,
orphaned, after ``kill``. Linux sends the parent-death signal once per exiting thread of the parent,
so it is a signal of its own (`PARENT_DIED`), which begins a drain and is never taken for a second
Ctrl+C.

A Flow closes its gateway first, which cancels the calls in flight; `stop_executors_in_order` is
what ``clip-image-encoder serve`` does before that: each Executor, in Flow order, drains and stops
while the gateway still relays the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARENT_DIED = signal.SIGHUP
"""What a served worker gets when its parent dies: it drains and stops as on SIGTERM, however many come."""
SETTLE_S = 1.0
"""How long a stopping Executor must see no request before it stops."""
_PR_SET_PDEATHSIG = 1


class RequestsInFlight:
    """Counts the requests being answered, so that a stop can wait for none to be left."""

    def __init__(self) -> None:
        self.count = 0
        self.started = 0
        """Requests begun so far: a stop sees whether any came while it waited."""
        self.stopping: signal.Signals | None = None
        """The signal that began the stop, once one has."""
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self.count += 1
        self.started += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def answer(
        self,
        work: Callable[..., Result],
        *args: object,
        one_at_a_time: AbstractAsyncContextManager | None = None,
    ) -> Result:
        """Run ``work(*args)`` on a worker thread as a request a stop waits for, under ``one_at_a_time``
        (a lock, for what cannot run twice at once) when given."""
        async with self.track(), one_at_a_time or contextlib.nullcontext():
            return await asyncio.to_thread(work, *args)

    async def wait_settled(self, timeout_s: float, settle_s: float = SETTLE_S) -> bool:
        """True once no request has been in flight for ``settle_s``, within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self._idle.wait()
                    started = self.started
                    await asyncio.sleep(settle_s)
                    if self.count == 0 and self.started == started:
                        return True
        except TimeoutError:
            return False


def serve_gracefully(grace_s: float) -> RequestsInFlight:
    """For an Executor's constructor: the tracker its endpoints enter; when a Jina runtime serves it, a stop
    signal waits (at most ``grace_s``) for the tracker to empty, and the process stops with its parent."""
    requests = RequestsInFlight()
    if drain_before_stopping(requests, grace_s):
        die_with_parent()
    return requests


def stop_executors_in_order(names: Sequence[str], timeout_s: float) -> None:
    """SIGTERM the Executor processes of this process's Flow, one deployment at a time in Flow order, and
    wait for each to end: a request in flight is answered by every Executor before the next one stops."""
    children = multiprocessing.active_children()
    for name in names:
        workers = [child for child in children if child.name.split("/")[0] == name]
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(timeout_s)


def drain_before_stopping(requests: RequestsInFlight, grace_s: float) -> bool:
    """Put the drain in front of the stop handlers of the running Jina runtime; False where there is none.

    Jina's handlers live on its event loop (``loop.add_signal_handler``); asyncio keeps them in
    ``loop._signal_handlers``, which is the only way to read one back, so that is read here: with
    no running loop or no handler (an Executor built outside a runtime, as in tests), nothing changes.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    jina_stops = {sig: getattr(loop, "_signal_handlers", {}).get(sig) for sig in STOP_SIGNALS}
    for sig, jina_stop in jina_stops.items():
        if jina_stop is not None:
            loop.add_signal_handler(sig, _on_stop_signal, sig, requests, grace_s, jina_stop)
    if jina_stops[signal.SIGTERM] is not None:
        loop.add_signal_handler(
            PARENT_DIED, _on_stop_signal, PARENT_DIED, requests, grace_s, jina_stops[signal.SIGTERM]
        )
    return any(jina_stops.values())


def _on_stop_signal(sig: signal.Signals, requests: RequestsInFlight, grace_s: float, jina_stop: asyncio.Handle) -> None:
    if requests.stopping == sig and sig != PARENT_DIED:  # the same signal again (a second Ctrl+C): stop now
        logger.warning("second %s: stopping without waiting for %d request(s) in flight", sig.name, requests.count)
        jina_stop._run()
        return
    if requests.stopping:  # SIGINT to the group, then SIGTERM from `serve`: one stop, still draining
        return
    requests.stopping = sig
    logger.info("%s: answering %d request(s) in flight before stopping", sig.name, requests.count)

    async def drain_then_stop() -> None:
        if not await requests.wait_settled(grace_s):
            logger.warning("stopping with %d request(s) still in flight after %.0f s", requests.count, grace_s)
        jina_stop._run()

    task = asyncio.get_running_loop().create_task(drain_then_stop())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()
"""Strong references to the drain tasks: the event loop keeps only weak ones."""


def die_with_parent() -> None:
    """Ask Linux to send this process `PARENT_DIED` when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, PARENT_DIED)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), PARENT_DIED)
