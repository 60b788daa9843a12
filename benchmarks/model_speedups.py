"""Model-level cpu speed-ups, each against the float32 eager model in one run: speed and embedding drift.

Variants: SDPA attention (transformers' default) against eager attention, ``torch.compile``,
``torch.ao`` dynamic int8 quantisation of the linear layers, bfloat16 weights, and the exported
ONNX model on onnxruntime (the ``backend: onnx`` path). The inputs are
real photos preprocessed exactly; drift is the cosine of each variant's embeddings to float32 eager.
Then process-wide settings, each round in fresh processes (neither can be undone within one), the
model on its own thread as in the Executor: glibc's allocator tuned to keep freed activation memory
(no page faults on the next forward) against its defaults; and, at batch 1, a second, idle OpenMP
team (another thread that once ran parallel torch work) against none.

    python benchmarks/model_speedups.py --out benchmarks/MODEL_SPEEDUPS.md
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from clip_image_encoder.images.preprocessing import PreprocessConfig, Preprocessor
from clip_image_encoder.models.export import export_model
from clip_image_encoder.models.loading import load_model

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's upper bound on 64-bit; one ViT-B/32 MLP activation at batch 32 is 20 MB."""


def keep_freed_activation_memory() -> bool:
    """Make glibc keep freed activation buffers for the next forward (large buffers on the heap, no
    trimming, one arena); False where not glibc.

    Compared here only: the forward got no faster beyond noise (MODEL_SPEEDUPS.md), so the Executor's
    ``keep_activation_memory`` option was removed.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def photo_batch(batch_size: int) -> torch.Tensor:
    photos = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    photos += list(load_sample_images().images)
    preprocessor = Preprocessor(PreprocessConfig())
    return preprocessor.batch([preprocessor.image(Image.fromarray(photos[i % len(photos)])) for i in range(batch_size)])


def images_per_second(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int) -> float:
    """Timed forwards of an already warmed-up ``forward``."""
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(repeats):
            forward(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


PROCESS_SETTINGS = {
    "defaults": "glibc malloc defaults, one OpenMP team (the Executor's default)",
    "keep_activation_memory": "keep_activation_memory (mallopt: no trim, one arena)",
    "extra_team": "an idle second OpenMP team (warm-up on the main thread, before the fix)",
}
"""Process-wide settings compared in fresh processes: neither mallopt nor an OpenMP team can be undone."""


def forward_in_fresh_process(folder: str, batch_size: int, repeats: int, setting: str) -> tuple[float, float]:
    """Images/s and minor page faults per forward of the float32 model, on its own thread as in the Executor."""
    if setting == "keep_activation_memory":
        assert keep_freed_activation_memory()
    model = load_model(folder, device="cpu", dtype="float32")
    with ThreadPoolExecutor(1) as model_thread:
        # Even the batch's normalisation is parallel torch work: it too runs on the model thread.
        batch = model_thread.submit(photo_batch, batch_size).result()
        if setting == "extra_team":
            model.embed(batch)  # parallel work on this thread gives it an OpenMP team, idle from now on
        model_thread.submit(model.embed, batch).result()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        speed = model_thread.submit(images_per_second, model.embed, batch, repeats).result()
    return speed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (repeats + 1)


def fresh_process_comparison(
    folder: Path, settings: list[str], batch_size: int, repeats: int, rounds: int
) -> list[tuple[str, str, str]]:
    """Each setting in its own fresh process, alternating for ``rounds`` rounds: median and every round."""
    results: dict[str, list[tuple[float, float]]] = {setting: [] for setting in settings}
    spawn = multiprocessing.get_context("spawn")
    for _ in range(rounds):
        for setting in settings:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                results[setting].append(
                    pool.submit(forward_in_fresh_process, str(folder), batch_size, repeats, setting).result()
                )
    rows = []
    for setting, runs in results.items():
        speeds = ", ".join(f"{speed:.1f}" for speed, _ in runs)
        rows.append(
            (
                PROCESS_SETTINGS[setting],
                f"{statistics.median(s for s, _ in runs):.1f} ({speeds})",
                f"{statistics.median(f for _, f in runs):.0f}",
            )
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the variants take turns")
    parser.add_argument("--process-rounds", type=int, default=3, help="fresh-process rounds for the process settings")
    parser.add_argument("--team-repeats", type=int, default=20, help="timed batch-1 forwards for the OpenMP team rows")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp()) / "vit-b32"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(folder)

    def load(**kwargs) -> CLIPVisionModelWithProjection:
        return CLIPVisionModelWithProjection.from_pretrained(folder, **kwargs).eval()

    batch = photo_batch(args.batch_size)
    eager = load(attn_implementation="eager")
    sdpa = load(attn_implementation="sdpa")
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "float32, eager attention (reference)": lambda x: eager(pixel_values=x).image_embeds,
        "float32, SDPA attention (default)": lambda x: sdpa(pixel_values=x).image_embeds,
    }
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(sdpa), {torch.nn.Linear}, dtype=torch.qint8)
    variants["dynamic int8 linear layers (torch.ao)"] = lambda x: quantized(pixel_values=x).image_embeds
    bf16 = load(attn_implementation="sdpa", dtype=torch.bfloat16)
    variants["bfloat16 weights"] = lambda x: bf16(pixel_values=x.to(torch.bfloat16)).image_embeds.float()
    compiled = torch.compile(sdpa)
    variants["torch.compile (inductor)"] = lambda x: compiled(pixel_values=x).image_embeds
    CLIPImageProcessorPil().save_pretrained(folder)
    onnx_folder = folder.parent / "onnx"
    export_model(load_model(str(folder), device="cpu", dtype="float32"), "onnx", onnx_folder)
    onnx = load_model(str(onnx_folder), device="cpu", backend="onnx")
    variants["onnxruntime, exported ONNX (backend: onnx)"] = onnx.forward

    with torch.inference_mode():
        reference = eager(pixel_values=batch).image_embeds.numpy()
    cosines: dict[str, str] = {}
    for name, forward in list(variants.items()):
        try:
            with torch.inference_mode():
                out = forward(batch).numpy()  # also the warm-up (and compilation)
            cosine = (out * reference).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
            cosines[name] = f"{cosine.min():.5f}"
        except Exception as exc:  # a variant that does not run here is a result too
            cosines[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            del variants[name]
    # The variants take turns in rounds: on a shared machine speed drifts by +-15% from minute to minute.
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, forward in variants.items():
            speeds[name].append(images_per_second(forward, batch, args.repeats))
    rows = []
    for name, cosine in cosines.items():
        runs = speeds.get(name)
        speed = f"{statistics.median(runs):.1f} ({', '.join(f'{s:.1f}' for s in runs)})" if runs else "-"
        rows.append((name, speed, cosine))
        print(rows[-1], flush=True)

    rounds = args.process_rounds
    allocator_rows = fresh_process_comparison(
        folder, ["defaults", "keep_activation_memory"], args.batch_size, args.repeats, rounds
    )
    team_rows = fresh_process_comparison(folder, ["defaults", "extra_team"], 1, args.team_repeats, rounds)
    report = [
        "# Model-level cpu speed-ups (ViT-B/32 vision tower, random weights, real photos)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size}; each variant {args.repeats} timed forwards "
        f"per round, {args.rounds} rounds taken in turn (median, then each round).",
        "",
        f"Command: `python benchmarks/model_speedups.py {' '.join(sys.argv[1:])}`",
        "",
        "| variant | images/s (each round) | min cosine to float32 eager |",
        "| --- | --- | --- |",
        *[f"| {name} | {speed} | {cosine} |" for name, speed, cosine in rows],
        "",
        f"## Allocator: batch {args.batch_size}, median of {rounds} fresh processes each (alternating)",
        "",
        "| process | images/s (each round) | minor page faults per forward |",
        "| --- | --- | --- |",
        *[f"| {name} | {speed} | {faults} |" for name, speed, faults in allocator_rows],
        "",
        f"## OpenMP teams: batch 1, {args.team_repeats} forwards, median of {rounds} fresh processes (alternating)",
        "",
        "| process | images/s (each round) | minor page faults per forward |",
        "| --- | --- | --- |",
        *[f"| {name} | {speed} | {faults} |" for name, speed, faults in team_rows],
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
