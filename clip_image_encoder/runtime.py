"""Process-wide settings of a process that serves one model."""

from __future__ import annotations

import os

import torch


def configure_cpu_threads(num_threads: int, replicas: int = 1) -> int:
    """Set torch's intra-op threads; 0 means the cores shared out among the replicas on this machine.

    Each Jina replica is a process with its own torch thread pool: without this, N replicas
    run N x cores threads and slow each other down.
    """
    if num_threads <= 0:
        num_threads = max(1, (os.cpu_count() or 1) // max(1, replicas))
    torch.set_num_threads(num_threads)
    return num_threads
