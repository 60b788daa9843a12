"""Where a model runs and in which precision: the one place that says what ``device: auto`` and
``dtype: auto`` mean, and how a serving process shares the cpu cores among replicas."""

from __future__ import annotations

import os

import torch

from clip_image_encoder.errors import OptionError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def wants_cuda(device: str) -> bool:
    """Whether ``device`` asks for a GPU: ``auto`` does when torch sees one here; ``cuda``, ``cuda:N`` always.

    A Ray driver asks this without resolving: its actors may have the GPUs it lacks.
    """
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first cuda GPU when one is visible, else the cpu; a GPU asked for must be there."""
    if device == "auto":
        return torch.device("cuda" if wants_cuda(device) else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise OptionError(f"option device must be auto, cpu, cuda or cuda:N, got {device!r} ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            f"option device {device!r}: torch sees no cuda GPU here; use device auto or cpu, or run where a GPU "
            "is visible (docker run --gpus all with the GPU image)"
        )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on cuda (tensor cores) and float32 elsewhere; ``int8`` computes in float32."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "int8":
        if device.type != "cpu":
            raise OptionError("option dtype int8 (dynamic quantisation of linear layers) runs on cpu only")
        return torch.float32
    if dtype not in TORCH_DTYPES:
        raise OptionError(f"option dtype must be one of auto, int8, {', '.join(TORCH_DTYPES)}; got {dtype!r}")
    return TORCH_DTYPES[dtype]


def configure_cpu_threads(num_threads: int, replicas: int = 1) -> int:
    """Set torch's intra-op threads; 0 means the cores shared out among the replicas on this machine.

    Each Jina replica is a process with its own torch thread pool: without this, N replicas
    run N x cores threads and slow each other down.
    """
    if num_threads <= 0:
        num_threads = max(1, (os.cpu_count() or 1) // max(1, replicas))
    torch.set_num_threads(num_threads)
    return num_threads
