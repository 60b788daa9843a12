"""``embed --engine ray`` against ``embed --engine local`` on one machine, side by side, real photos.

One folder of distinct 640x480 JPEGs (crops of the photos that scikit-image and scikit-learn ship)
is embedded by each system in turn, in rounds, each run a fresh ``clip-image-encoder embed``
process as a user would start it (``RAY_ADDRESS`` unset: the ray engine starts a local Ray and
stops it). For each run: wall time from process start to exit (imports, Ray start-up and model
loading included), images/s over that wall time, the command's own "embedded N images in X s"
(from the engine's start, Ray start-up included), and the peak of the summed resident memory of
the command's whole process tree (Ray's GCS, raylet, workers and actors included), sampled every
0.1 s. Each run's embeddings are compared with the first local run's.

    python benchmarks/ray_vs_local.py --images 200 --rounds 2 --out benchmarks/RAY_VS_LOCAL.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

SIZE = (640, 480)
SYSTEMS = {
    "local": ["--engine", "local"],
    "ray, 1 actor x 1 CPU (default)": ["--engine", "ray"],
    "ray, 1 actor x 1 CPU, 2 torch threads": ["--engine", "ray", "--num-threads", "2"],
    "ray, running cluster (RAY_ADDRESS)": ["--engine", "ray"],
}
"""What each system adds to the command; the local engine uses both cores for torch (``num_threads`` 0)."""
WARM = "ray, running cluster (RAY_ADDRESS)"
"""This one joins a Ray that this script started beforehand (untimed): the cost of a job without Ray's start-up."""


@dataclass
class Run:
    wall_s: float
    reported_s: float
    peak_tree_rss_mb: float
    max_abs_difference: float


def tiny_clip(folder: Path) -> str:
    """The tests' tiny random CLIP vision tower: the engines' own overhead dominates."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=32
    )
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return str(folder)


def photo_folder(folder: Path, count: int) -> Path:
    """``count`` distinct JPEGs (quality 90) of 640x480: each photo cropped to 4:3 at a shifting offset, resized."""
    photos = [
        getattr(skimage_data, name)()
        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
    ]
    photos = [Image.fromarray(photo) for photo in [*photos, *load_sample_images().images]]
    folder.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        shift = (i // len(photos)) * 5
        width = min(photo.width - shift, photo.height * 4 // 3)
        crop = photo.crop((shift, 0, shift + width, width * 3 // 4)).resize(SIZE, Image.Resampling.BICUBIC)
        buffer = BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        (folder / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
    return folder


def tree_rss_mb(root: int, include_root: bool = True) -> float:
    """Summed resident memory of ``root`` and all its descendants now (shared pages counted in each)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            todo.extend(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            if pid == root and not include_root:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_once(command: list[str], out: Path, reference: np.ndarray | None, warm: bool) -> tuple[Run, np.ndarray]:
    """One command, timed; with ``warm``, memory counts this script's Ray cluster too (all but this process)."""
    env = dict(os.environ)
    if warm:
        import ray

        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(os.getpid(), include_root=False) if warm else tree_rss_mb(process.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    stdout = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {stdout}")
    reported = float(re.search(r"embedded \d+ images in ([\d.]+) s", stdout).group(1))
    embeddings = np.array(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    difference = 0.0 if reference is None else float(np.abs(embeddings - reference).max())
    return Run(wall, reported, peak, difference), embeddings


@contextlib.contextmanager
def ray_cluster() -> Iterator[None]:
    """A local Ray of this machine's cores started by this script, as a cluster would be: running before the job."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def measure(model: str, folder: Path, images: int, rounds: int, work: Path) -> dict[str, list[Run]]:
    """Every system once per round, in turn, so that a slow minute of the machine falls on each."""
    runs: dict[str, list[Run]] = {name: [] for name in SYSTEMS}
    reference = None
    for round_ in range(rounds):
        for name, extra in SYSTEMS.items():
            out = work / f"out-{round_}-{len(runs[name])}-{extra[1]}.parquet"
            command = ["clip-image-encoder", "embed", str(folder), "--out", str(out), "--format", "parquet"]
            command += ["--model", model, "--quiet", "--overwrite", *extra]
            with ray_cluster() if name == WARM else contextlib.nullcontext():
                run, embeddings = run_once(command, out, reference, warm=name == WARM)
            if reference is None:
                reference = embeddings
            assert len(embeddings) == images, (name, len(embeddings))
            runs[name].append(run)
            print(f"{Path(model).name} round {round_ + 1} {name}: {run}", flush=True)
    return runs


def spread(values: list[float], digits: int = 1) -> str:
    """Every round's value: the spread is the point on a shared machine."""
    return " / ".join(f"{value:.{digits}f}" for value in values)


def table(model_label: str, images: int, runs: dict[str, list[Run]]) -> list[str]:
    lines = [
        f"### {model_label}",
        "",
        "| system | wall s (start to exit) | images/s over wall | command's own s | peak tree RSS MB "
        "| max abs difference from local |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, measured in runs.items():
        walls = [run.wall_s for run in measured]
        lines.append(
            f"| {name} | {spread(walls)} | {spread([images / wall for wall in walls])} "
            f"| {spread([run.reported_s for run in measured])} "
            f"| {spread([run.peak_tree_rss_mb for run in measured], 0)} "
            f"| {max(run.max_abs_difference for run in measured):.1e} |"
        )
    local = statistics.median(run.wall_s for run in runs["local"])
    for name, measured in runs.items():
        if name != "local":
            ratio = statistics.median(run.wall_s for run in measured) / local
            lines.append(f"\n{name}: median wall time {ratio:.2f}x the local engine's.")
    return [*lines, ""]


READING = """### How to read it

- One machine with 2 cores is the case where Ray cannot win: it has no second node to spread the
  work over, and it spends part of the cores and memory on itself. The ray engine pays, per run,
  Ray's start-up (GCS, raylet, dashboard agent, idle workers: several seconds and about ten Python
  processes) unless it joins a running cluster (`RAY_ADDRESS`), then a new actor process that
  imports torch and loads the model (the local engine does so in the process it already runs), and
  a copy of every file's bytes through Ray's object store. With a running cluster, its processes
  count in the peak tree RSS too.
- Peak tree RSS sums every process of the run, so each Ray process's copy of Python, torch and
  shared pages counts once per process: it says how much memory the run takes from the machine,
  not what one process holds.
- Differences from the local engine's embeddings are float32 rounding: torch sums in another
  order with another thread count (1 in the actor by default, 2 locally) or batch size (Ray hands
  an actor fewer rows than `batch_size` where a block of files ends). Filenames, their order and
  the errors report are the same (`tests/bulk/test_ray_engine.py`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["tiny", "efficientnet-lite0"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    load_before = os.getloadavg()[0]
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = photo_folder(work / "photos", args.images)
        for model in args.models:
            path = tiny_clip(work / "tiny") if model == "tiny" else model
            label = "tiny random CLIP (ViT, 2 layers, width 32)" if model == "tiny" else model
            sections += table(label, args.images, measure(path, folder, args.images, args.rounds, work))
    header = [
        "# Ray engine against the local engine, one machine",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}; "
        f"{args.images} distinct {SIZE[0]}x{SIZE[1]} JPEGs (crops of scikit-image and scikit-learn photos), "
        "batch 32, parquet output, fp32 on cpu. Each cell lists every round (round 1 / round 2 ...). "
        f"1-minute load average {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after "
        "(a shared machine: other work ran beside it).",
        "",
        f"Command: `python benchmarks/ray_vs_local.py --images {args.images} --rounds {args.rounds}"
        f"{' --models ' + ' '.join(args.models) if args.models != ['tiny', 'efficientnet-lite0'] else ''}"
        f"{' --out ' + str(args.out) if args.out else ''}`",
        "",
    ]
    report = "\n".join([*header, *sections, READING])
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
