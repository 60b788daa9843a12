"""Throughput, latency and memory of our Executor against the model-only ceiling and the seed-style baseline.

One run measures, side by side on the same ViT-B/32-shaped model (random weights: speed does not
depend on them) and the same real photos:

1. ceiling: the model's forward pass alone on ready tensors;
2. ours: the Executor end to end through a Flow over gRPC (client to embeddings back);
3. baseline: the seed-style Executor (`seed_executor.py`), served the same way;

for small (640x480 JPEG) and large (12 megapixel JPEG) photos, batch sizes 1/8/32 and 1 or 4
concurrent clients, with images/s, p50/p95 latency per request and the peak resident memory of
the Executor process. Then the drift of the fast preprocessing mode (memory against request size
is `memory.py`).

    python benchmarks/throughput.py --out benchmarks/RESULTS.md

Large photos come from Debian's ``mate-backgrounds`` wallpapers when installed
(``apt-get install mate-backgrounds``), otherwise from scikit-image photos scaled up.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

os.environ.setdefault("JINA_MP_START_METHOD", "spawn")
os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
os.environ.setdefault("JINA_DEFAULT_HOST", "127.0.0.1")
os.environ.setdefault("JINA_LOG_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from docarray import DocList
from jina import Client, Flow
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_executor import SeedStyleEncoder

from clip_image_encoder.decoding import DecodeLimits
from clip_image_encoder.encoding import ImageEncoder
from clip_image_encoder.executor import CLIPImageEncoder, ImageDocument
from clip_image_encoder.model import load_model

WALLPAPERS = Path("/usr/share/backgrounds/mate")
SMALL, LARGE = (640, 480), (4000, 3000)


def make_vit_b32(folder: Path) -> Path:
    """CLIPVisionConfig's defaults are ViT-B/32: 12 layers, width 768, patch 32, 512-d projection."""
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig()).eval().save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder


def source_photos() -> tuple[list[Image.Image], str]:
    wallpapers = sorted(WALLPAPERS.glob("**/*.jpg"))
    packaged = [Image.fromarray(a) for a in (skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee())]
    packaged += [Image.fromarray(a) for a in load_sample_images().images]
    if wallpapers:
        return [Image.open(path).convert("RGB") for path in wallpapers] + packaged, "mate-backgrounds + skimage/sklearn"
    return packaged, "skimage/sklearn (install mate-backgrounds for real multi-megapixel photos)"


def jpeg_set(photos: list[Image.Image], size: tuple[int, int], count: int) -> list[bytes]:
    """``count`` distinct JPEGs (quality 90) of ``size``: each photo cropped to the aspect and resized."""
    encoded = []
    for i in range(count):
        photo = photos[i % len(photos)]
        shift = (i // len(photos)) * 7  # a different crop on each reuse keeps the set distinct
        aspect = size[0] / size[1]
        width = min(photo.width - shift, int(photo.height * aspect))
        height = int(width / aspect)
        crop = photo.crop((shift, 0, shift + width, height)).resize(size, Image.Resampling.BICUBIC)
        buffer = BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure_ceiling(model_dir: Path, batch_size: int, images: int) -> dict:
    model = load_model(str(model_dir), device="cpu")
    batch = torch.randn(batch_size, 3, 224, 224)
    model.embed(batch)
    latencies = []
    for _ in range(max(1, images // batch_size)):
        start = time.perf_counter()
        model.embed(batch)
        latencies.append(time.perf_counter() - start)
    return {"images_per_s": batch_size * len(latencies) / sum(latencies), "latencies": latencies, "rss_mb": None}


def descendants_peak_rss_mb() -> float:
    """Largest VmHWM (peak resident memory) among this process's descendants: the Executor's process."""
    peak, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            todo.append(child)
            try:
                for line in Path(f"/proc/{child}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
    return peak / 1024


MIN_IMAGES = 64
"""Each cell sends at least this many images (at least one request per client); ``--min-images`` sets it."""


def measure_served(executor: type, uses_with: dict, photos: list[bytes], batch_size: int, clients: int) -> dict:
    """Serve one Executor in a Flow over gRPC; each client thread posts requests of ``batch_size`` photos."""
    port = 52000 + (os.getpid() % 1000)
    flow = Flow(port=port).add(uses=executor, uses_with={**uses_with, "batch_size": batch_size})
    requests_per_client = max(1, math.ceil(MIN_IMAGES / (clients * batch_size)))
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(offset: int) -> None:
        client = Client(host="127.0.0.1", port=port)
        for r in range(requests_per_client):
            start = (offset * requests_per_client + r) * batch_size
            chosen = [photos[(start + k) % len(photos)] for k in range(batch_size)]
            docs = DocList[ImageDocument]([ImageDocument(bytes_=b) for b in chosen])
            began = time.perf_counter()
            answer = client.post("/", inputs=docs, request_size=batch_size, return_type=DocList[ImageDocument])
            elapsed = time.perf_counter() - began
            assert all(doc.embedding is not None for doc in answer), [doc.error for doc in answer]
            with lock:
                latencies.append(elapsed)

    with flow:
        client_loop(0)  # warm-up: first request pays for lazy initialisation
        latencies.clear()
        threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        rss = descendants_peak_rss_mb()
    images = clients * requests_per_client * batch_size
    return {"images_per_s": images / wall, "latencies": latencies, "rss_mb": rss}


def fast_mode_drift(model_dir: Path, photos: list[bytes]) -> dict:
    """Cosine between exact and fast embeddings of the same photos, and the mean pixel difference."""
    encoder = ImageEncoder(load_model(str(model_dir), device="cpu"), DecodeLimits())
    exact = np.stack(list(encoder.encode(photos, preprocessing="exact")))
    fast = np.stack(list(encoder.encode(photos, preprocessing="fast")))
    cosines = (exact * fast).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(fast, axis=1))
    pixel_diff = [
        np.abs(encoder.prepare(p).astype(int) - encoder.prepare(p, fast=True).astype(int)).mean() for p in photos
    ]
    encoder.close()
    return {"min": float(cosines.min()), "mean": float(cosines.mean()), "pixel": float(np.mean(pixel_diff))}


def run(
    out: Path | None, batch_sizes: list[int], client_counts: list[int], set_names: list[str], repeat: int = 1
) -> None:
    model_dir = make_vit_b32(Path(tempfile.mkdtemp()) / "vit-b32")
    photos, origin = source_photos()
    sets = {"small 640x480": jpeg_set(photos, SMALL, 64), "large 12 MP": jpeg_set(photos, LARGE, 24)}
    sets = {name: photos for name, photos in sets.items() if name.split()[0] in set_names}
    ours = {"pretrained_model_name_or_path": str(model_dir)}
    lean = {**ours, "preprocessing": "fast", "keep_image_data": False}
    systems: list[tuple[str, Callable[[list[bytes], int, int], dict]]] = [
        ("baseline (seed-style)", lambda p, b, c: measure_served(SeedStyleEncoder, ours, p, b, c)),
        ("ours exact", lambda p, b, c: measure_served(CLIPImageEncoder, ours, p, b, c)),
        ("ours fast", lambda p, b, c: measure_served(CLIPImageEncoder, {**ours, "preprocessing": "fast"}, p, b, c)),
        ("ours fast, no image data back", lambda p, b, c: measure_served(CLIPImageEncoder, lean, p, b, c)),
    ]
    rows = []
    for set_name, set_photos in sets.items():
        for batch_size in batch_sizes:
            ceiling = measure_ceiling(model_dir, batch_size, 64)
            rows.append((set_name, batch_size, "-", "ceiling (model only)", ceiling))
            print(f"{set_name} b{batch_size} ceiling {ceiling['images_per_s']:.1f} img/s", flush=True)
            for clients, _ in itertools.product(client_counts, range(repeat)):  # repeats interleave systems
                for system_name, measure in systems:
                    if system_name.startswith("ours fast") and set_name.startswith("small"):
                        continue  # draft decoding cannot shrink 640x480 below twice the 224 target
                    result = measure(set_photos, batch_size, clients)
                    rows.append((set_name, batch_size, clients, system_name, result))
                    print(
                        f"{set_name} b{batch_size} c{clients} {system_name} {result['images_per_s']:.1f} img/s",
                        flush=True,
                    )
    drift = fast_mode_drift(model_dir, sets["large 12 MP"]) if "large 12 MP" in sets else None
    report = render(rows, drift, origin)
    print(report)
    if out:
        out.write_text(report)


def render(rows: list, drift: dict | None, origin: str) -> str:
    ceilings = {(r[0], r[1]): r[4]["images_per_s"] for r in rows if r[2] == "-"}
    baselines = {(r[0], r[1], r[2]): r[4]["images_per_s"] for r in rows if r[3].startswith("baseline")}
    lines = [
        "# Throughput: ours against the model-only ceiling and the seed-style baseline",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, float32, cpu. Model: ViT-B/32-shaped CLIP vision tower, "
        f"random weights. Photos: {origin}, re-encoded as JPEG quality 90.",
        "",
        f"Command: `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`",
        "",
        "| photos | batch | clients | system | images/s | p50 ms | p95 ms | peak RSS MB | / ceiling | / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for set_name, batch, clients, system, result in rows:
        speed = result["images_per_s"]
        lat = result["latencies"]
        rss = f"{result['rss_mb']:.0f}" if result["rss_mb"] else "-"
        baseline = baselines.get((set_name, batch, clients))
        vs_base = f"{speed / baseline:.2f}" if baseline and not system.startswith(("baseline", "ceiling")) else ""
        vs_ceiling = f"{speed / ceilings[(set_name, batch)]:.2f}" if not system.startswith("ceiling") else ""
        lines.append(
            f"| {set_name} | {batch} | {clients} | {system} | {speed:.1f} | {statistics.median(lat) * 1000:.0f} "
            f"| {percentile(lat, 0.95) * 1000:.0f} | {rss} | {vs_ceiling} | {vs_base} |"
        )
    if drift is not None:
        lines += [
            "",
            "## Fast preprocessing drift (large photos)",
            "",
            f"Cosine of fast to exact embeddings: min {drift['min']:.5f}, mean {drift['mean']:.5f}; "
            f"mean absolute difference of the 224x224 model input: {drift['pixel']:.2f} grey levels of 255.",
        ]
    lines += ["", "Memory against request size: `benchmarks/memory.py`, recorded in `MEMORY.md`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    global MIN_IMAGES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sets", nargs="+", choices=("small", "large"), default=["small", "large"])
    parser.add_argument("--min-images", type=int, default=MIN_IMAGES, help="images per cell, at least")
    parser.add_argument("--repeat", type=int, default=1, help="measure every served cell this many times")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    MIN_IMAGES = args.min_images
    run(args.out, args.batch_sizes, args.clients, args.sets, args.repeat)
    print(f"benchmark process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
