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

    python benchmarks/throughput.py --sets small --batch-sizes 1 8 32 --clients 1 4 --min-images 64 \
        --repeat 3 --out benchmarks/RESULTS_SMALL.md   # ~20 min on 2 cores
    python benchmarks/throughput.py --sets large --batch-sizes 1 8 32 --clients 1 4 --min-images 64 \
        --repeat 2 --out benchmarks/RESULTS_LARGE.md   # ~25 min on 2 cores

Large photos come from Debian's ``mate-backgrounds`` wallpapers when installed
(``apt-get install mate-backgrounds``), otherwise from scikit-image photos scaled up.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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
from jina import Flow
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd import all_embedded, run_clients
from seed_executor import SeedStyleEncoder

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.images.preprocessing import Preprocessor
from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.models.devices import configure_cpu_threads
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

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


class CeilingProcess:
    """The model alone in its own process, set up as the Executor sets up its own (``configure_cpu_threads``).

    It stays loaded for the whole run, idle while the served systems are measured, so that every
    round measures the ceiling right beside them.
    """

    def __init__(self, model_dir: Path) -> None:
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_ceiling_model,
            initargs=(str(model_dir),),
        )

    def measure(self, batch_size: int, images: int) -> dict:
        return self._pool.submit(_time_forwards, batch_size, images).result()

    def __enter__(self) -> CeilingProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()


_ceiling_model = None


def _load_ceiling_model(model_dir: str) -> None:
    global _ceiling_model
    configure_cpu_threads(0)
    _ceiling_model = load_model(model_dir, device="cpu")


def _time_forwards(batch_size: int, images: int) -> dict:
    batch = torch.randn(batch_size, 3, 224, 224)
    _ceiling_model.embed(batch)
    latencies = []
    for _ in range(max(1, images // batch_size)):
        start = time.perf_counter()
        _ceiling_model.embed(batch)
        latencies.append(time.perf_counter() - start)
    return {"images_per_s": batch_size * len(latencies) / sum(latencies), "latencies": latencies, "rss_mb": None}


def descendant_pids() -> set[int]:
    return descendant_pids_of(os.getpid())


def descendant_pids_of(root: int) -> set[int]:
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        try:
            children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            continue
        found.update(children)
        todo.extend(children)
    return found


def status_mb(pids: set[int], field: str = "VmHWM", combine=max) -> float:
    """A memory field of ``/proc/PID/status`` over these processes, in MB: by default the largest peak (VmHWM)."""
    values = [0]
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    values.append(int(line.split()[1]))
        except OSError:
            pass
    return combine(values) / 1024


def peak_rss_mb(pids: set[int]) -> float:
    """Largest VmHWM (peak resident memory) among these processes."""
    return status_mb(pids)


MIN_IMAGES = 64
"""Each measurement sends at least this many images (at least one request per client); ``--min-images`` sets it."""


class ServedSystem:
    """One Executor serving in its own Flow over gRPC for a whole (photos, batch size) cell.

    All systems of a cell serve at once and take turns, each idle while another is measured, so
    that a slow minute of a shared machine falls on every system of a round instead of on one cell.
    """

    def __init__(self, executor: type, uses_with: dict, batch_size: int, port: int) -> None:
        self.flow = Flow(port=port).add(uses=executor, uses_with={**uses_with, "batch_size": batch_size})
        self.batch_size = batch_size
        self.port = port
        self.pids: set[int] = set()

    def __enter__(self) -> ServedSystem:
        before = descendant_pids()
        self.flow.__enter__()
        self.pids = descendant_pids() - before
        return self

    def __exit__(self, *exc: object) -> None:
        self.flow.__exit__(*exc)

    def measure(self, photos: list[bytes], clients: int) -> dict:
        return measure_served(self.port, self.batch_size, self.pids, photos, clients)


class TreeExecutor:
    """The Executor of a source tree (another commit's checkout, or this one), served by ``jina executor
    --uses config.yml`` from that tree: the way to compare two versions of the code side by side in one run.
    """

    def __init__(self, tree: Path, uses_with: dict, batch_size: int, port: int, config: str = "config.yml") -> None:
        self.tree, self.batch_size, self.port, self.config = tree, batch_size, port, config
        self.uses_with = {**uses_with, "batch_size": batch_size}
        self.process: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def __enter__(self) -> TreeExecutor:
        jina = Path(sys.executable).with_name("jina")
        command = [str(jina), "executor", "--uses", self.config, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--uses-with", json.dumps(self.uses_with)],
            cwd=self.tree,
            env={**os.environ, "PYTHONPATH": str(self.tree)},  # the tree's package, not the installed one
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        try:
            while socket.socket().connect_ex(("127.0.0.1", self.port)) != 0:  # a bare Executor has no readiness call
                assert self.process.poll() is None and time.monotonic() < deadline, f"{self.tree} did not start"
                time.sleep(1)
        except BaseException:
            self.__exit__()
            raise
        self.pids = {self.process.pid, *descendant_pids_of(self.process.pid)}
        return self

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=60)

    def measure(self, photos: list[bytes], clients: int) -> dict:
        return measure_served(self.port, self.batch_size, self.pids, photos, clients)


def measure_served(port: int, batch_size: int, pids: set[int], photos: list[bytes], clients: int) -> dict:
    """``clients`` concurrent clients (`crowd.run_clients`) post requests of ``batch_size`` photos; images/s over
    the wall time of all."""
    requests = clients * max(1, math.ceil(MIN_IMAGES / (clients * batch_size)))

    def make_docs(number: int) -> DocList:
        chosen = [photos[(number * batch_size + k) % len(photos)] for k in range(batch_size)]
        return DocList[ImageDocument]([ImageDocument(bytes_=data) for data in chosen])

    run_clients(port, 1, 1, make_docs, all_embedded)  # warm-up: a first request pays for lazy initialisation
    outcome = run_clients(port, clients, requests, make_docs, all_embedded)
    assert not outcome.errors and not outcome.refused, outcome.errors[:3]
    return {
        "images_per_s": outcome.inputs / outcome.wall_s,
        "latencies": outcome.latencies,
        "rss_mb": peak_rss_mb(pids),
    }


def fast_mode_drift(model_dir: Path, photos: list[bytes]) -> dict:
    """Cosine between exact and fast embeddings of the same photos, and the mean pixel difference."""
    encoder = ImageEncoder(load_model(str(model_dir), device="cpu"), DecodeLimits())
    exact = np.stack(list(encoder.encode(photos, EncoderOptions(preprocessing="exact"))))
    fast = np.stack(list(encoder.encode(photos, EncoderOptions(preprocessing="fast"))))
    cosines = (exact * fast).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(fast, axis=1))
    exact_mode, fast_mode = (Preprocessor(encoder.model.preprocess, fast) for fast in (False, True))
    pixel_diff = [
        np.abs(encoder.prepare(p, exact_mode).astype(int) - encoder.prepare(p, fast_mode).astype(int)).mean()
        for p in photos
    ]
    encoder.close()
    return {"min": float(cosines.min()), "mean": float(cosines.mean()), "pixel": float(np.mean(pixel_diff))}


def run(
    out: Path | None,
    batch_sizes: list[int],
    client_counts: list[int],
    set_names: list[str],
    repeat: int = 1,
    compare_tree: Path | None = None,
) -> None:
    model_dir = make_vit_b32(Path(tempfile.mkdtemp()) / "vit-b32")
    photos, origin = source_photos()
    sets = {"small 640x480": jpeg_set(photos, SMALL, 64), "large 12 MP": jpeg_set(photos, LARGE, 24)}
    sets = {name: photos for name, photos in sets.items() if name.split()[0] in set_names}
    ours = {"pretrained_model_name_or_path": str(model_dir)}
    systems: list[tuple[str, type, dict]] = [
        ("baseline (seed-style)", SeedStyleEncoder, ours),
        ("ours exact", CLIPImageEncoder, ours),
        ("ours fast", CLIPImageEncoder, {**ours, "preprocessing": "fast"}),
        (
            "ours fast, no image data back",
            CLIPImageEncoder,
            {**ours, "preprocessing": "fast", "keep_image_data": False},
        ),
    ]
    if compare_tree is not None:  # before/after a change: two versions of our Executor, nothing else
        systems = [
            (f"before ({compare_tree.name})", compare_tree, ours),
            ("after (this tree)", Path(__file__).resolve().parent.parent, ours),
        ]
    first_port = 52000 + (os.getpid() % 500) * 8
    rows = []
    with CeilingProcess(model_dir) as ceiling_process:
        for (set_name, set_photos), batch_size in itertools.product(sets.items(), batch_sizes):
            # Draft decoding cannot shrink 640x480 below twice the 224 target: no fast mode for small photos.
            here = [
                system for system in systems if not (system[0].startswith("ours fast") and set_name.startswith("small"))
            ]
            with contextlib.ExitStack() as stack:
                served = {
                    name: stack.enter_context(
                        (TreeExecutor if isinstance(executor, Path) else ServedSystem)(
                            executor, uses_with, batch_size, first_port + i
                        )
                    )
                    for i, (name, executor, uses_with) in enumerate(here)
                }
                for round_ in range(repeat):
                    ceiling = ceiling_process.measure(batch_size, MIN_IMAGES)
                    rows.append(Row(set_name, batch_size, "-", "ceiling (model only)", round_, ceiling))
                    print(f"{set_name} b{batch_size} r{round_ + 1} ceiling {ceiling['images_per_s']:.1f} img/s")
                    for clients, (name, system) in itertools.product(client_counts, served.items()):
                        result = system.measure(set_photos, clients)
                        rows.append(Row(set_name, batch_size, clients, name, round_, result))
                        speed = result["images_per_s"]
                        print(f"{set_name} b{batch_size} r{round_ + 1} c{clients} {name} {speed:.1f} img/s")
    drift = fast_mode_drift(model_dir, sets["large 12 MP"]) if "large 12 MP" in sets else None
    report = render(rows, drift, origin)
    print(report)
    if out:
        out.write_text(report)


@dataclass(frozen=True)
class Row:
    set_name: str
    batch_size: int
    clients: int | str
    system: str
    round_: int
    """Which repeat: ratios divide by the ceiling and baseline of the same round."""
    result: dict


def render(rows: list[Row], drift: dict | None, origin: str) -> str:
    ceilings = {(r.set_name, r.batch_size, r.round_): r.result["images_per_s"] for r in rows if r.clients == "-"}
    baselines = {
        (r.set_name, r.batch_size, r.clients, r.round_): r.result["images_per_s"]
        for r in rows
        if r.system.startswith(("baseline", "before"))
    }

    def ratios(row: Row) -> tuple[float | None, float | None]:
        """This row against the ceiling and the baseline of its own round."""
        speed = row.result["images_per_s"]
        baseline = baselines.get((row.set_name, row.batch_size, row.clients, row.round_))
        compared = baseline and not row.system.startswith(("baseline", "before", "ceiling"))
        vs_ceiling = speed / ceilings[(row.set_name, row.batch_size, row.round_)] if row.clients != "-" else None
        return vs_ceiling, (speed / baseline if compared else None)

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    cells: dict[tuple, list[Row]] = {}
    for row in rows:
        cells.setdefault((row.set_name, row.batch_size, row.clients, row.system), []).append(row)
    rounds = max(row.round_ for row in rows) + 1
    lines = [
        "# Throughput: our Executor before and after a change, against the model-only ceiling"
        if any(row.system.startswith("before") for row in rows)
        else "# Throughput: ours against the model-only ceiling and the seed-style baseline",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, float32, cpu. Model: ViT-B/32-shaped CLIP vision tower, "
        f"random weights. Photos: {origin}, re-encoded as JPEG quality 90.",
        "",
        f"Command: `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`",
        "",
        f"Method: for each photo set and batch size, every system serves in its own Flow over gRPC at once; "
        f"{rounds} rounds, each measuring the ceiling (the model alone in its own process, set up as the "
        "Executor's) and then every system and client count in turn, so that each ratio compares measurements "
        "taken minutes apart at most. The baseline keeps the seed's defaults. Images/s: all images of a "
        "measurement over its wall time; latency: per request, client side; peak RSS: the Executor's processes.",
        "",
        f"## Summary: medians over {rounds} rounds (ratios are medians of each round's ratio)",
        "",
        "| photos | batch | clients | system | images/s | p50 ms | p95 ms | peak RSS MB | / ceiling | / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (set_name, batch, clients, system), cell in cells.items():
        latencies = [latency for row in cell for latency in row.result["latencies"]]
        rss = max((row.result["rss_mb"] or 0) for row in cell)
        vs_ceiling = [r for r in (ratios(row)[0] for row in cell) if r is not None]
        vs_base = [r for r in (ratios(row)[1] for row in cell) if r is not None]
        lines.append(
            f"| {set_name} | {batch} | {clients} | {system} "
            f"| {statistics.median(row.result['images_per_s'] for row in cell):.1f} "
            f"| {statistics.median(latencies) * 1000:.0f} | {percentile(latencies, 0.95) * 1000:.0f} "
            f"| {f'{rss:.0f}' if rss else '-'} | {fmt(statistics.median(vs_ceiling) if vs_ceiling else None)} "
            f"| {fmt(statistics.median(vs_base) if vs_base else None)} |"
        )
    lines += [
        "",
        "## Every round",
        "",
        "| photos | batch | clients | round | system | images/s | p50 ms | p95 ms | / ceiling | / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lat = row.result["latencies"]
        vs_ceiling, vs_base = ratios(row)
        lines.append(
            f"| {row.set_name} | {row.batch_size} | {row.clients} | {row.round_ + 1} | {row.system} "
            f"| {row.result['images_per_s']:.1f} | {statistics.median(lat) * 1000:.0f} "
            f"| {percentile(lat, 0.95) * 1000:.0f} | {fmt(vs_ceiling)} | {fmt(vs_base)} |"
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
    parser.add_argument("--repeat", type=int, default=3, help="rounds: every system and the ceiling, in turn")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="compare our Executor before (a checkout of another commit, e.g. made with git worktree) and after",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    MIN_IMAGES = args.min_images
    run(args.out, args.batch_sizes, args.clients, args.sets, args.repeat, args.compare_tree)
    print(f"benchmark process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
