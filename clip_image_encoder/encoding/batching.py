"""The one batching helper: lazy fixed-size chunks of any iterable (``itertools.batched`` needs Python 3.12)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Chunks of ``size`` items (the last may be shorter), taken from ``items`` only as they are asked for."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
