"""cpu serving settings: threads shared among replicas, all torch work on one thread, kept activation memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from clip_image_encoder.encoding import ImageEncoder
from clip_image_encoder.model import EmbeddingModel, configure_cpu_threads, load_model

FAULTS_OF_REPEATED_FORWARDS = """
import resource, sys, torch
from clip_image_encoder.model import keep_freed_activation_memory
if sys.argv[1] == "kept":
    assert keep_freed_activation_memory()
def forward():  # ViT-B/32 at batch 32 holds a few 20 MB activations at once, then frees them all
    buffers = [torch.empty(5_000_000).fill_(1.0) for _ in range(8)]
    del buffers
forward()
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    forward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PAGES_TOUCHED = 3 * 8 * 5_000_000 * 4 // 4096


def minor_faults_of_repeated_forwards(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_FORWARDS, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout.split()[-1])


def test_kept_activation_memory_is_reused_without_page_faults():
    """Under glibc's defaults most runs here faulted all ~117k pages in again; some only one buffer's."""
    assert minor_faults_of_repeated_forwards("kept") <= PAGES_TOUCHED // 20


def test_threads_are_shared_among_replicas():
    threads = torch.get_num_threads()
    try:
        assert configure_cpu_threads(0, replicas=1) == (os.cpu_count() or 1)
        assert configure_cpu_threads(0, replicas=(os.cpu_count() or 1) * 2) == 1
        assert configure_cpu_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


def test_loading_warm_up_and_forwards_run_on_one_thread(tiny_model_dir: Path, photos: dict[str, np.ndarray]):
    """libgomp stops spinning once idle OpenMP teams outnumber the cores: a warm-up on the caller's thread
    beside forwards on the model thread made batch-1 forwards 20-35 ms slower.
    """
    threads: list[tuple[str, int]] = []

    def load() -> EmbeddingModel:
        model = load_model(str(tiny_model_dir), device="cpu", dtype="int8")  # quantisation computes while loading
        threads.append(("load", threading.get_ident()))
        forward = model.forward

        def recording_forward(pixel_values: torch.Tensor) -> torch.Tensor:
            threads.append(("forward", threading.get_ident()))
            return forward(pixel_values)

        model.forward = recording_forward
        return model

    encoder = ImageEncoder(load)
    try:
        results = list(encoder.encode([photos["astronaut"], photos["coffee"]], batch_size=1))
    finally:
        encoder.close()
    assert all(isinstance(result, np.ndarray) for result in results)
    assert [stage for stage, _ in threads] == ["load", "forward", "forward", "forward"]  # warm-up, then 2 batches
    assert len({ident for _, ident in threads}) == 1
    assert threads[0][1] != threading.get_ident()
