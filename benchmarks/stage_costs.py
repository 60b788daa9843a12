"""Per-stage costs on this machine, and the scaling model they give (benchmarks/SCALING.md).

Measures, with the pipeline's own stage timings (the ``clip_encoder_stage_seconds`` stages), one decode
thread and one torch thread, so that every figure is the cost on one core:

- decode and preprocess per image, for 640x480 and 12-megapixel JPEGs, exact and fast preprocessing;
- the forward pass per batch of 32 for a ViT-B/32-shaped model (random weights: speed does not depend on them);
- the transfer per image: a gRPC request's protobuf size and (de)serialisation time per image.

Then it projects throughput against replicas, cores, GPUs and nodes, and what 10 million images a day
need, marking each figure as measured (here) or projected (from the measured ones and stated assumptions).

    python benchmarks/stage_costs.py --out benchmarks/SCALING.md   # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from docarray import DocList

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder, ImageItem
from clip_image_encoder.encoding.metrics import PipelineMetrics
from clip_image_encoder.service.documents import ImageDocument

sys.path.insert(0, str(Path(__file__).parent))
from throughput import LARGE, SMALL, jpeg_set, make_vit_b32, source_photos

IMAGES_PER_DAY = 10_000_000
BATCH = 32
GPU_FORWARD_ASSUMED = 3000.0
"""ViT-B/32 forward images/s on one data-centre GPU in float16 at batch 256: an assumption, not measured here
(no GPU was lent to this session); replace it with benchmarks/throughput.py's ceiling on a GPU."""


class StageTimer(PipelineMetrics):
    """Collects the seconds of every stage the pipeline reports."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def stage(self, name: str, parent: Any = None) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.seconds[name].append(time.perf_counter() - began)


def stage_medians(model: Path, photos: list[bytes], preprocessing: str) -> dict[str, float]:
    options = EncoderOptions(
        pretrained_model_name_or_path=str(model),
        num_workers=1,
        num_threads=1,
        batch_size=BATCH,
        preprocessing=preprocessing,
        device="cpu",
    )
    with ImageEncoder.from_options(options) as encoder:
        list(encoder.encode((ImageItem(photo) for photo in photos[:BATCH]), options))  # warm-up
        encoder.metrics = timer = StageTimer()
        list(encoder.encode((ImageItem(photo) for photo in photos), options))
    return {name: statistics.median(values) for name, values in timer.seconds.items()}


def transfer_per_image(photos: list[bytes]) -> tuple[float, float]:
    """Bytes and seconds (serialise + parse) per image of a request carrying JPEG bytes."""
    docs = DocList[ImageDocument]([ImageDocument(bytes_=photo) for photo in photos])
    began = time.perf_counter()
    message = docs.to_protobuf().SerializeToString()
    parsed = type(docs.to_protobuf())()
    parsed.ParseFromString(message)
    DocList[ImageDocument].from_protobuf(parsed)
    return len(message) / len(photos), (time.perf_counter() - began) / len(photos)


def project(costs: dict[str, float]) -> list[tuple[str, str, str]]:
    """(setting, images/s, nodes for 10 M images a day) rows from the per-core costs."""
    needed = IMAGES_PER_DAY / 86_400
    rows = []
    for size in ("640x480", "12 MP"):
        decode = costs[f"decode+preprocess {size} fast"]
        transfer = costs[f"transfer per image {size}"]
        per_core = 1 / (decode + costs["forward per image"] + transfer)
        for cores in (2, 16, 64):
            rate = per_core * cores
            rows.append((f"cpu node, {cores} cores, {size} JPEGs", f"{rate:.0f}", f"{math.ceil(needed / rate)}"))
        for cores in (16, 32):
            decode_rate = cores / (decode + transfer)
            rate = min(GPU_FORWARD_ASSUMED, decode_rate)
            bound = "decode-bound" if decode_rate < GPU_FORWARD_ASSUMED else "GPU-bound"
            rows.append(
                (f"1 GPU + {cores} cores, {size} JPEGs ({bound})", f"{rate:.0f}", f"{math.ceil(needed / rate)}")
            )
    return rows


def render(costs: dict[str, float], rows: list[tuple[str, str, str]], seconds: float) -> str:
    measured = "\n".join(f"| {name} | {value * 1000:.2f} |" for name, value in costs.items())
    projected = "\n".join(f"| {setting} | {rate} | {nodes} |" for setting, rate, nodes in rows)
    return f"""# Scaling: per-stage costs (measured) and throughput per node (projected)

Machine: {os.cpu_count()} cores x86_64, torch {torch.__version__}, one decode thread and one torch thread
(so each cost is core-seconds). Model: ViT-B/32 shape (random weights), batch {BATCH}, float32.
Photos: real photos re-encoded as JPEG quality 90. Measured in {seconds:.0f} s; load average at the end
{os.getloadavg()[0]:.1f} (above 2 means other work shared the cores, and the costs are high by that much).

    python benchmarks/stage_costs.py --out benchmarks/SCALING.md

## Measured here: cost per image on one core

| stage | ms |
|---|---|
{measured}

Decode and preprocess run on the Executor's `num_workers` threads; the forward pass on torch's
threads; the transfer is the protobuf of a request with the JPEG bytes in it (what the gateway and
the Executor each serialise and parse once; network time is on top and is not measured).

## Projected: images/s per node and nodes for 10 million images a day ({IMAGES_PER_DAY / 86_400:.0f} images/s)

Model: a cpu node spends decode + forward + transfer core-seconds per image on each core (replicas x
threads = cores; `num_threads: 0` shares the cores among replicas), so throughput is linear in cores:
an assumption (one replica per few cores keeps it close; one process with many torch threads scales
less well), so read the large-node rows as upper bounds.
A GPU node runs the forward pass on the GPU at an **assumed** {GPU_FORWARD_ASSUMED:.0f} images/s (ViT-B/32,
float16; not measured here: no GPU was lent) and decodes on its cores: its throughput is the smaller of the two.
Fast preprocessing (JPEG draft decoding) is assumed for 12 MP photos. Nodes scale out linearly
(replicas behind Jina's gateway, or Ray Data actors): the gateway and the network are assumed not to
be the bottleneck.

| setting | images/s per node | nodes for 10 M/day |
|---|---|---|
{projected}

What would change the picture: on GPU nodes 12 MP decoding, not the model, is the limit (decode on the
GPU with nvJPEG, or send smaller images); on cpu nodes a smaller or quantised model (`dtype`, ONNX) helps
in proportion to the forward pass's share.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96, help="images per measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    began = time.perf_counter()
    model = make_vit_b32(Path(tempfile.mkdtemp()) / "vit-b32")
    photos, _ = source_photos()
    costs: dict[str, float] = {}
    for size, label in ((SMALL, "640x480"), (LARGE, "12 MP")):
        images = jpeg_set(photos, size, args.images if size == SMALL else args.images // 2)
        for mode in ("exact", "fast"):
            stages = stage_medians(model, images, mode)
            costs[f"decode+preprocess {label} {mode}"] = stages["decode"] + stages["preprocess"]
            costs["forward per image"] = min(costs.get("forward per image", math.inf), stages["forward"] / BATCH)
        size_bytes, seconds = transfer_per_image(images)
        costs[f"transfer per image {label}"] = seconds
        print(f"{label}: {size_bytes / 1024:.0f} KiB per image in a request")
    rows = project(costs)
    report = render(costs, rows, time.perf_counter() - began)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
