"""cpu serving settings: threads shared among replicas, all torch work on one thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder
from clip_image_encoder.models.devices import configure_cpu_threads
from clip_image_encoder.models.loading import load_model
from clip_image_encoder.models.network import EmbeddingModel


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
        results = list(encoder.encode([photos["astronaut"], photos["coffee"]], EncoderOptions(batch_size=1)))
    finally:
        encoder.close()
    assert all(isinstance(result, np.ndarray) for result in results)
    assert [stage for stage, _ in threads] == ["load", "forward", "forward", "forward"]  # warm-up, then 2 batches
    assert len({ident for _, ident in threads}) == 1
    assert threads[0][1] != threading.get_ident()
