"""Fault drill: SIGKILL one encoder replica in the middle of a stream of requests.

A Flow of the encoder with 2 replicas (`clip_image_encoder.service.flow.build_flow`, what ``serve
--replicas 2`` runs) answers a stream of requests from several clients; after a third of them, one
replica's process is killed with SIGKILL. Then it checks and prints: every Document answered once
(none lost, none twice), each embedding equal to the in-process encoder's for its image, requests
that failed at the client, the retries Jina's gateway made (its debug log), the latency before the
kill, and the time to recover (from the kill to the first answer after it, and the slowest request
that was in flight). Finally one more request, to show that the Flow keeps serving.

    python benchmarks/replica_fault.py --out benchmarks/REPLICA_FAULT.md   # ViT-B/32 shape, ~2 min on 2 cores

The test suite runs the same drill on a tiny model (tests/service/test_scale_out.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
from docarray import DocList
from jina import Client
from PIL import Image
from skimage import data as skimage_data

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder, ImageItem
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.flow import build_flow

RETRY_LINE = "errored, with error"
"""What Jina's gateway logs (at debug level) for each failed attempt that it retries or gives up."""


def drill_images(count: int = 8) -> list[bytes]:
    """Distinct 640x480 JPEGs from the photos that scikit-image ships."""
    sources = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    images = []
    for index in range(count):
        photo = Image.fromarray(sources[index % len(sources)]).rotate(index * 11).resize((640, 480))
        buffer = BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr, and so the Flow's processes' logs, to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def drill(model: str, requests: int = 60, docs_per_request: int = 4, clients: int = 2, batch_size: int = 4) -> dict:
    """Run the drill on ``model`` (a folder or hub name) and return its figures and findings."""
    options = EncoderOptions(pretrained_model_name_or_path=model, batch_size=batch_size)
    images = drill_images()
    with ImageEncoder.from_options(options) as encoder:
        expected = [np.asarray(result) for result in encoder.encode((ImageItem(image) for image in images), options)]
    port, log = _free_port(), Path(tempfile.mkstemp(suffix=".log")[1])
    flow = build_flow(options, port=port, replicas=2)
    sent: dict[str, int] = {}  # Document id -> image index
    answers: list[ImageDocument] = []
    timings: list[tuple[float, float, str | None]] = []  # start, end, error
    lock, next_request = threading.Lock(), iter(range(requests))
    killed: dict[str, float] = {}

    def client_loop() -> None:
        client = Client(host="127.0.0.1", port=port)
        while True:
            with lock:
                index = next(next_request, None)
            if index is None:
                return
            ids = [f"{index}-{position}" for position in range(docs_per_request)]
            picks = [(index * docs_per_request + position) % len(images) for position in range(docs_per_request)]
            docs = DocList[ImageDocument](
                [ImageDocument(id=id_, bytes_=images[pick]) for id_, pick in zip(ids, picks, strict=True)]
            )
            with lock:
                sent.update(zip(ids, picks, strict=True))
            began = time.monotonic()
            try:
                answer = client.post("/", inputs=docs, return_type=DocList[ImageDocument], results_in_order=True)
                error = None
            except Exception as exc:  # counted as a failed request, the drill goes on
                answer, error = [], repr(exc)
            with lock:
                timings.append((began, time.monotonic(), error))
                answers.extend(answer)
                if len(timings) == requests // 3 and not killed:
                    victim = next(c for c in multiprocessing.active_children() if c.name.startswith("encoder/rep-1"))
                    os.kill(victim.pid, signal.SIGKILL)
                    killed["at"] = time.monotonic()

    previous_level = os.environ.get("JINA_LOG_LEVEL")
    os.environ["JINA_LOG_LEVEL"] = "DEBUG"  # the gateway logs each retry at debug level
    try:
        with _output_to(log), flow:
            threads = [threading.Thread(target=client_loop) for _ in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            after = Client(host="127.0.0.1", port=port).post(
                "/",
                inputs=DocList[ImageDocument]([ImageDocument(bytes_=images[0])]),
                return_type=DocList[ImageDocument],
            )
    finally:
        if previous_level is None:
            os.environ.pop("JINA_LOG_LEVEL", None)
        else:
            os.environ["JINA_LOG_LEVEL"] = previous_level
    retries = log.read_text(errors="replace").count(RETRY_LINE)
    log.unlink()
    answered_ids = [doc.id for doc in answers]
    wrong = [
        doc.id
        for doc in answers
        if doc.error is not None or not np.allclose(np.asarray(doc.embedding), expected[sent[doc.id]], atol=1e-5)
    ]
    kill_at = killed["at"]
    before = [end - begin for begin, end, _ in timings if end <= kill_at]
    in_flight = [end - begin for begin, end, _ in timings if begin < kill_at < end]
    first_after = min((end for begin, end, error in timings if end > kill_at and error is None), default=None)
    return {
        "requests": len(timings),
        "documents_sent": len(sent),
        "documents_answered": len(answered_ids),
        "lost": len(set(sent) - set(answered_ids)),
        "answered_twice": len(answered_ids) - len(set(answered_ids)),
        "wrong_or_failed_embeddings": len(wrong),
        "failed_requests": sum(error is not None for _, _, error in timings),
        "gateway_retries": retries,
        "latency_p50_before_kill_s": statistics.median(before) if before else None,
        "slowest_in_flight_at_kill_s": max(in_flight, default=None),
        "first_answer_after_kill_s": None if first_after is None else first_after - kill_at,
        "images_per_s": len(answered_ids) / elapsed,
        "serves_after": len(after) == 1 and after[0].embedding is not None,
    }


def render(figures: dict, model: str) -> str:
    rows = "\n".join(
        f"| {name} | {value if not isinstance(value, float) else f'{value:.3f}'} |" for name, value in figures.items()
    )
    return (
        "# Replica fault drill\n\n"
        f"Encoder with 2 replicas ({model}); one replica SIGKILLed after a third of the requests. Machine: "
        f"{os.cpu_count()} cores, cpu.\n\n"
        "    python benchmarks/replica_fault.py --out benchmarks/REPLICA_FAULT.md\n\n"
        "Retries are failed attempts that Jina's gateway logged and retried on the live replica: it keeps\n"
        "trying the dead replica's address for later requests too, each failing at once, so they outnumber the\n"
        "requests that were in flight on it when it died. Latencies are client-side, per request of 4 JPEGs.\n"
        "\n"
        f"| figure | value |\n|---|---|\n{rows}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder or hub name (default: a ViT-B/32-shaped model, random weights)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = args.model
    if model is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from throughput import make_vit_b32

        model = str(make_vit_b32(Path(tempfile.mkdtemp()) / "vit-b32"))
    figures = drill(model, requests=args.requests, clients=args.clients)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(render(figures, args.model or "ViT-B/32 shape, random weights"))


if __name__ == "__main__":
    main()
