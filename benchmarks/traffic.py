"""Search traffic: many clients sending one image or one text each, with batching across requests on and off.

One run measures, side by side on a ViT-B/32-shaped CLIP (random weights: speed does not depend on them),
each served by ``jina executor`` from its source tree:

- "batching off": the Executor of ``--compare-tree`` (a checkout from before batching across requests,
  which takes requests one at a time on cpu);
- "batching on": this tree's, with its defaults;

for 1, 4, 16 and 64 concurrent clients posting one 640x480 JPEG (or one text) per request, and one client
posting requests of 32 (the batch throughput that the crowd should reach). Figures: throughput, p50/p95/p99
latency per request (client side), refusals ("overloaded"), other errors, and the peak resident memory of
the server. Rounds alternate the systems, so a slow minute of the machine falls on both.

    python benchmarks/traffic.py --compare-tree /tmp/before --out benchmarks/TRAFFIC.md       # ~25 min, 2 cores
    python benchmarks/traffic.py --soak --out benchmarks/SOAK.md                              # ~12 min

``--soak``: 10 000 single-image requests from 16 clients against this tree, a tenth of them broken images:
every answer is checked (same id, an embedding equal to the photo's own for a good image, the decoding error
for a broken one), and the server's resident memory is sampled every 2 s. ``--device cuda`` runs the same on
a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from docarray import DocList
from jina import Client
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from crowd import Outcome, all_embedded, run_clients  # noqa: E402
from throughput import (  # noqa: E402
    SMALL,
    TreeExecutor,
    jpeg_set,
    peak_rss_mb,
    percentile,
    source_photos,
    status_mb,
)
from tiny_clip import byte_level_tokenizer  # noqa: E402

from clip_image_encoder.service.documents import ImageDocument, TextDocument  # noqa: E402

TEXTS = ("a photo of a cat", "a red bicycle against a wall", "coffee in a white cup", "the rocket on its pad")


def make_clip_b32(folder: Path) -> Path:
    """A whole ViT-B/32-shaped CLIP (CLIPConfig's defaults: both towers, 512-d) with a byte-level tokenizer."""
    tokenizer = byte_level_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class Load:
    name: str
    clients: int
    per_request: int


def loads(client_counts: list[int]) -> list[Load]:
    return [Load("1 client x 32 per request", 1, 32), *(Load(f"{n} x 1", n, 1) for n in client_counts)]


def measure(system: TreeExecutor, load: Load, modality: str, photos: list[bytes], requests: int) -> dict:
    def make_docs(number: int) -> DocList:
        start = number * load.per_request
        if modality == "text":
            return DocList[TextDocument](
                [TextDocument(text=TEXTS[(start + k) % len(TEXTS)]) for k in range(load.per_request)]
            )
        chosen = [photos[(start + k) % len(photos)] for k in range(load.per_request)]
        return DocList[ImageDocument]([ImageDocument(bytes_=data) for data in chosen])

    run_clients(system.port, 1, 2, make_docs, all_embedded)  # warm-up
    count = max(requests, 3 * load.clients) if load.per_request == 1 else max(2, requests // 32)
    outcome = run_clients(system.port, load.clients, count, make_docs, all_embedded)
    latencies = outcome.latencies or [float("nan")]
    return {
        "per_s": outcome.inputs / outcome.wall_s,
        "p50": percentile(latencies, 0.5) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "refused": outcome.refused,
        "errors": len(outcome.errors),
        "first_error": outcome.errors[0] if outcome.errors else "",
        "rss_mb": peak_rss_mb(system.pids),
    }


def compare(args: argparse.Namespace, model_dir: Path, photos: list[bytes]) -> list[str]:
    on = f"batching on, max_queued_documents={args.max_queued}" if args.max_queued else "batching on (this tree)"
    trees = {f"batching off ({args.compare_tree.name})": args.compare_tree, on: HERE.parent}
    uses_with = {"pretrained_model_name_or_path": str(model_dir), "device": args.device}
    ours = {on: {"max_queued_documents": args.max_queued}} if args.max_queued else {}
    rows: dict[tuple[str, str, str], list[dict]] = {}
    port = 53000 + (os.getpid() % 400) * 4
    for modality, config in (("image", "config.yml"), ("text", "text_config.yml")):
        with contextlib.ExitStack() as stack:  # both systems serve at once and take turns, idle while the other runs
            served = {
                label: stack.enter_context(
                    TreeExecutor(tree, {**uses_with, **ours.get(label, {})}, 32, port + offset, config=config)
                )
                for offset, (label, tree) in enumerate(trees.items())
            }
            for round_number, load in itertools.product(range(args.rounds), loads(args.clients)):
                for label, system in served.items():
                    result = measure(system, load, modality, photos, args.requests)
                    rows.setdefault((modality, load.name, label), []).append(result)
                    print(
                        f"{modality} r{round_number + 1} {load.name:26} {label:32} {result['per_s']:7.1f}/s "
                        f"p50 {result['p50']:6.0f} p99 {result['p99']:6.0f} ms refused {result['refused']} "
                        f"errors {result['errors']} {result['first_error'][:120]}",
                        flush=True,
                    )
    return table(rows)


def table(rows: dict[tuple[str, str, str], list[dict]]) -> list[str]:
    """Medians over the rounds; ratios to the same system's one-client batch-32 throughput."""
    lines = [
        "| queries | load | system | per s | / batch-32 | p50 ms | p95 ms | p99 ms | p99/p50 | refused | errors "
        "| peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (modality, load, label), results in rows.items():
        median = {key: statistics.median(r[key] for r in results) for key in ("per_s", "p50", "p95", "p99", "rss_mb")}
        batch = statistics.median(r["per_s"] for r in rows[modality, "1 client x 32 per request", label])
        refused, errors = sum(r["refused"] for r in results), sum(r["errors"] for r in results)
        lines.append(
            f"| {modality} | {load} | {label} | {median['per_s']:.1f} | {median['per_s'] / batch:.2f} | "
            f"{median['p50']:.0f} | {median['p95']:.0f} | {median['p99']:.0f} | {median['p99'] / median['p50']:.1f} | "
            f"{refused} | {errors} | {median['rss_mb']:.0f} |"
        )
    return lines


def soak(args: argparse.Namespace, model_dir: Path, photos: list[bytes]) -> list[str]:
    """10 000 requests of one image from 16 clients, a tenth broken; every answer checked, memory sampled."""
    uses_with = {"pretrained_model_name_or_path": str(model_dir), "device": args.device}
    port = 53000 + (os.getpid() % 400) * 4
    with TreeExecutor(HERE.parent, uses_with, 32, port) as system:
        expected = reference_embeddings(port, photos)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample_memory() -> None:
            began = time.perf_counter()
            while not stop.wait(2):
                samples.append((time.perf_counter() - began, current_rss_mb(system.pids)))

        sampler = threading.Thread(target=sample_memory)
        sampler.start()

        def make_docs(number: int) -> DocList:
            if number % 10 == 9:
                return DocList[ImageDocument](
                    [ImageDocument(id=f"broken-{number}", bytes_=b"\xff\xd8 broken %d" % number)]
                )
            return DocList[ImageDocument]([ImageDocument(id=f"photo-{number}", bytes_=photos[number % len(photos)])])

        def check(sent: DocList, answer: DocList) -> str:
            (doc,) = answer
            if doc.id != sent[0].id:
                return f"id {sent[0].id} came back as {doc.id}"
            if doc.id.startswith("broken"):
                return "" if doc.embedding is None and "not a decodable image" in (doc.error or "") else "no error"
            number = int(doc.id.split("-")[1])
            got, want = np.asarray(doc.embedding), expected[number % len(photos)]
            cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
            return "" if cosine >= 0.9999 else f"embedding differs from the photo's own (cosine {cosine:.5f})"

        outcome = run_clients(port, args.soak_clients, args.soak_requests, make_docs, check)
        stop.set()
        sampler.join()
    return soak_report(args, outcome, samples)


def reference_embeddings(port: int, photos: list[bytes]) -> list[np.ndarray]:
    """Each photo embedded alone, before the crowd: what every later answer for it must equal."""
    client = Client(host="127.0.0.1", port=port)
    embedded = []
    for data in photos:
        (doc,) = client.post(
            "/", inputs=DocList[ImageDocument]([ImageDocument(bytes_=data)]), return_type=DocList[ImageDocument]
        )
        embedded.append(np.asarray(doc.embedding))
    return embedded


def current_rss_mb(pids: set[int]) -> float:
    """The resident memory of these processes now, summed."""
    return status_mb(pids, "VmRSS", sum)


def soak_report(args: argparse.Namespace, outcome: Outcome, samples: list[tuple[float, float]]) -> list[str]:
    answered = len(outcome.latencies)
    warm = [rss for seconds, rss in samples if seconds >= samples[-1][0] * 0.1] or [0.0]
    latencies = outcome.latencies or [float("nan")]
    return [
        f"Soak: {args.soak_requests} requests of one 640x480 JPEG from {args.soak_clients} clients, every tenth a "
        "broken image; every answer checked (same id; a good image's embedding equal to that photo's own, cosine "
        ">= 0.9999; a broken one's decoding error).",
        "",
        "| requests | answered | refused | wrong or failed | wall s | per s | p50 ms | p99 ms | RSS after warm-up MB "
        "| RSS at the end MB | growth MB | max RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {args.soak_requests} | {answered} | {outcome.refused} | {len(outcome.errors)} | {outcome.wall_s:.0f} | "
        f"{answered / outcome.wall_s:.1f} | {percentile(latencies, 0.5) * 1000:.0f} | "
        f"{percentile(latencies, 0.99) * 1000:.0f} | {warm[0]:.0f} | {warm[-1]:.0f} | {warm[-1] - warm[0]:+.0f} | "
        f"{max(warm):.0f} |",
        "",
        "Warm-up: the first tenth of the run. First problems: " + ("; ".join(outcome.errors[:3]) or "none") + ".",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-tree", type=Path, help="a checkout from before batching across requests")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=96, help="single-input requests per measurement (at least)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-queued", type=int, help="this tree's max_queued_documents (to see the overload refusal at work)"
    )
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--soak-requests", type=int, default=10_000)
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("JINA_DEFAULT_HOST", "127.0.0.1")
    model_dir = make_clip_b32(Path(tempfile.mkdtemp()) / "clip-b32")
    photos = jpeg_set(source_photos()[0], SMALL, 16)
    if args.soak:
        lines = soak(args, model_dir, photos)
    else:
        if args.compare_tree is None:
            parser.error("--compare-tree is needed (or --soak)")
        lines = compare(args, model_dir, photos)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (cpu run)"
    command = " ".join(["python", "benchmarks/traffic.py", *sys.argv[1:]])
    report = [
        "# Search traffic: one image or one text per request, batching across requests on and off",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}, "
        f"GPU: {gpu}. Model: ViT-B/32-shaped CLIP, random weights. Images: 640x480 JPEGs (skimage/sklearn photos).",
        "",
        f"Command: `{command}`",
        "",
        *lines,
        "",
    ]
    print("\n".join(report))
    if args.out:
        args.out.write_text("\n".join(report))


if __name__ == "__main__":
    main()
