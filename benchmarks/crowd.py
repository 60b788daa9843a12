"""A crowd of clients for the serving benchmarks: many Jina clients, each sending its requests, all answers checked.

Asyncio clients on one event loop, not threads: Jina's synchronous ``Client.post`` called from several threads
sends one request at a time (measured: 8 threads posting to an Executor that sleeps 0.5 s took 4.1 s; 8 asyncio
clients 0.5 s), which would measure a queue of one client, not a crowd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from docarray import DocList
from jina import Client


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    """Requests answered with the "overloaded, retry" refusal."""
    errors: list[str] = field(default_factory=list)
    """Anything else that went wrong: a Document without its embedding, a failed request."""
    wall_s: float = 0.0
    inputs: int = 0


MakeDocs = Callable[[int], DocList]
"""Request number -> the Documents it sends."""
Check = Callable[[DocList, DocList], str]
"""(sent, answer) -> what is wrong with the answer, or ""."""


def run_clients(port: int, clients: int, requests: int, make_docs: MakeDocs, check: Check) -> Outcome:
    """``clients`` clients, each its own asyncio Jina client, share ``requests`` requests; every answer is checked."""
    return asyncio.run(_crowd(port, clients, requests, make_docs, check))


async def _crowd(port: int, clients: int, requests: int, make_docs: MakeDocs, check: Check) -> Outcome:
    outcome, counter = Outcome(), iter(range(requests))

    async def client_loop() -> None:
        client = Client(host="127.0.0.1", port=port, asyncio=True)
        while (number := next(counter, None)) is not None:
            docs = make_docs(number)
            began = time.perf_counter()
            try:
                answers = [
                    answer
                    async for answer in client.post("/", inputs=docs, request_size=len(docs), return_type=type(docs))
                ]
            except Exception as exc:  # the client raises what the Executor raised
                if "overloaded" in str(exc):
                    outcome.refused += 1
                else:
                    outcome.errors.append(f"request {number}: {exc}")
                continue
            outcome.latencies.append(time.perf_counter() - began)
            outcome.inputs += len(docs)
            answer = type(docs)([doc for part in answers for doc in part])
            if problem := check(docs, answer):
                outcome.errors.append(f"request {number}: {problem}")

    began = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    outcome.wall_s = time.perf_counter() - began
    return outcome


def all_embedded(sent: DocList, answer: DocList) -> str:
    if [doc.id for doc in answer] != [doc.id for doc in sent]:
        return "ids or order changed"
    missing = [doc.error for doc in answer if doc.embedding is None]
    return f"{len(missing)} without embedding: {missing[:1]}" if missing else ""
