"""A graceful stop: SIGTERM while a request of large photos is in flight; the client gets every embedding,
then the server exits by itself, frees its port and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from docarray import DocList
from helpers import encode_image, free_port, wait_for_port
from jina import Client
from PIL import Image

from clip_image_encoder.config.files import config_yaml
from clip_image_encoder.service.documents import ImageDocument

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SIGNAL_AFTER_S = 1.5
"""When the signal goes, after the request was sent; the request itself takes several seconds on 2 cores."""


@pytest.fixture(scope="module")
def large_photos(photos, tmp_path_factory) -> list[Path]:
    """24 distinct 12-megapixel JPEGs in a folder the servers may read: sent as paths, they reach the Executor
    at once, and decoding and resizing them keeps the request busy there for seconds."""
    folder = tmp_path_factory.mktemp("large-photos")
    paths = []
    for index in range(24):
        photo = Image.fromarray(list(photos.values())[index % len(photos)])
        paths.append(folder / f"{index}.jpg")
        paths[-1].write_bytes(encode_image(photo.rotate(index * 7).resize((4000, 3000)), "JPEG", quality=90))
    return paths


def session_processes(session_id: int) -> list[int]:
    """Processes still alive in the server's session (it was started in a session of its own)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop_during_request(command: list[str], port: int, large_photos: list[Path], endpoint: str = "/") -> dict:
    """Start the server, post the large request, send SIGTERM to the server's process (as `kill` and `docker
    stop` do) while the request is in flight, and report what the client got and how the server ended."""
    server = subprocess.Popen(command, cwd=REPO, env={**os.environ, "JINA_LOG_LEVEL": "ERROR"}, start_new_session=True)
    answer: dict = {}
    try:
        wait_for_port(port, server)
        docs = DocList[ImageDocument]([ImageDocument(url=str(photo)) for photo in large_photos])

        def post() -> None:
            client = Client(host="127.0.0.1", port=port)
            try:
                answer["docs"] = client.post(
                    endpoint, inputs=docs, request_size=len(docs), return_type=DocList[ImageDocument]
                )
            except Exception as exc:  # reported by the assertions, not lost in the thread
                answer["error"] = repr(exc)
            answer["answered_at"] = time.monotonic()

        client_thread = threading.Thread(target=post)
        client_thread.start()
        time.sleep(SIGNAL_AFTER_S)
        signalled_at = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        client_thread.join(timeout=120)
        returncode = server.wait(timeout=60)
        stopped_at = time.monotonic()
        deadline = time.monotonic() + 30
        while session_processes(server.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return {
            **answer,
            "signalled_at": signalled_at,
            "returncode": returncode,
            "stop_seconds": stopped_at - signalled_at,
            "left_behind": session_processes(server.pid),
            "port_free": port_is_free(port),
        }
    finally:
        if server.poll() is None or session_processes(server.pid):
            os.killpg(server.pid, signal.SIGKILL)


def assert_answered_in_full(result: dict, count: int) -> None:
    assert "docs" in result, f"the client got no answer: {result.get('error')}"
    assert result["answered_at"] > result["signalled_at"], "the request was not in flight when the signal went"
    assert len(result["docs"]) == count
    assert all(doc.error is None and np.asarray(doc.embedding).shape == (16,) for doc in result["docs"])
    assert result["left_behind"] == [] and result["port_free"]


def test_serve_answers_the_request_in_flight_then_exits_0(tiny_model_dir, tmp_path, large_photos):
    config = tmp_path / "config.yml"
    config.write_text(
        config_yaml()
        .replace("openai/clip-vit-base-patch32", str(tiny_model_dir))
        .replace("local_uri_roots: []", f"local_uri_roots: [{large_photos[0].parent}]")
    )
    port = free_port()
    command = [str(BIN / "clip-image-encoder"), "serve", "--config", str(config), "--port", str(port)]
    result = stop_during_request(command, port, large_photos)
    assert_answered_in_full(result, len(large_photos))
    assert result["returncode"] == 0
    assert result["stop_seconds"] < 25


def test_serve_search_keeps_everything_indexed_when_stopped_during_an_index_request(
    tiny_model_dir, tmp_path, large_photos, store_db
):
    from clip_image_encoder.search.stores import open_store

    config = tmp_path / "config.yml"
    config.write_text(
        config_yaml()
        .replace("openai/clip-vit-base-patch32", str(tiny_model_dir))
        .replace("local_uri_roots: []", f"local_uri_roots: [{large_photos[0].parent}]")
    )
    port, db = free_port(), store_db
    command = [str(BIN / "clip-image-encoder"), "serve", "--config", str(config), "--port", str(port)]
    result = stop_during_request([*command, "--search", "--db", str(db)], port, large_photos, endpoint="/index")
    assert_answered_in_full(result, len(large_photos))
    assert result["returncode"] == 0
    with open_store(db) as index:
        assert len(index) == len(large_photos)


@pytest.mark.parametrize("native", [False, True], ids=["worker-process", "native"])
def test_jina_executor_answers_the_request_in_flight_then_stops(tiny_model_dir, large_photos, native):
    """`jina executor`'s parent has no SIGTERM handler and dies at once (Jina's CLI: exit -15); its worker gets
    the parent-death signal, answers the request in flight in full, and stops, freeing the port. Before, the
    worker went on serving, orphaned. With `--native` there is one process, and it exits 0."""
    port = free_port()
    uses_with = json.dumps(
        {"pretrained_model_name_or_path": str(tiny_model_dir), "local_uri_roots": [str(large_photos[0].parent)]}
    )
    command = [str(BIN / "jina"), "executor", "--uses", "config.yml", "--port", str(port), "--uses-with", uses_with]
    result = stop_during_request([*command, "--native"] if native else command, port, large_photos)
    assert_answered_in_full(result, len(large_photos))
    assert result["returncode"] == (0 if native else -signal.SIGTERM)


def test_the_drain_waits_for_requests_and_only_the_same_signal_twice_forces_a_stop():
    """SIGINT to a process group, then SIGTERM from `serve`, is one stop that still drains; a second Ctrl+C is not.
    The parent-death signal, which Linux sends once per exiting thread of the parent, never forces."""
    import asyncio

    from clip_image_encoder.service.shutdown import PARENT_DIED, RequestsInFlight, _on_stop_signal

    async def scenario(first: signal.Signals, then: signal.Signals, again: signal.Signals) -> list[str]:
        stops: list[str] = []
        loop = asyncio.get_running_loop()
        jina_stop = asyncio.Handle(lambda: stops.append(f"stopped at {loop.time() - began:.1f}"), (), loop)
        requests = RequestsInFlight()
        began = loop.time()

        async def request_of(seconds: float) -> None:
            async with requests.track():
                await asyncio.sleep(seconds)

        in_flight = asyncio.create_task(request_of(0.5))
        await asyncio.sleep(0)
        _on_stop_signal(first, requests, 10, jina_stop)
        _on_stop_signal(then, requests, 10, jina_stop)
        assert stops == []  # neither stops before the request in flight is answered
        await in_flight
        await asyncio.sleep(1.6)  # answered at 0.5 s, then 1 s with no request: stopped
        _on_stop_signal(again, requests, 10, jina_stop)  # the first signal again: at once, unless parent death
        return stops

    stops = asyncio.run(scenario(signal.SIGINT, signal.SIGTERM, signal.SIGINT))
    assert len(stops) == 2
    assert 1.4 <= float(stops[0].split()[-1]) <= 2.0
    stops = asyncio.run(scenario(PARENT_DIED, PARENT_DIED, PARENT_DIED))
    assert len(stops) == 1
    assert 1.4 <= float(stops[0].split()[-1]) <= 2.0
