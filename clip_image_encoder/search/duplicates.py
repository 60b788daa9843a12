"""Near-duplicate groups: every pair of indexed images at least ``threshold`` alike, joined into groups.

Pairs come from a range search in the store's own index (`VectorStore.similar_pairs`: FAISS for
the embedded store, Milvus's range search for a server), never from a copy of every vector; a group is a
connected component of the graph those pairs draw, so an edited copy of an edited copy joins its
original's group. Each group lists its most original-looking member first: the most pixels
(copies are usually crops or downscales), then the most bytes per pixel (least compressed), then
the key, so the order is stable.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.extras import require
from clip_image_encoder.search.stores import VectorStore


@dataclass(frozen=True)
class ImageFacts:
    """What is known of an indexed image's file; None when the key is not a readable image file."""

    width: int | None = None
    height: int | None = None
    file_size: int | None = None
    """Bytes on disk."""

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def bytes_per_pixel(self) -> float:
        return (self.file_size or 0) / self.pixels if self.pixels else 0.0


@dataclass(frozen=True)
class GroupMember:
    key: str
    """The indexed key: a file path for indexes built by the command line, a ``url`` or id in a Flow's."""
    similarity: float
    """Cosine similarity to the group's first (most original) member; 1.0 for that member."""
    facts: ImageFacts


@dataclass(frozen=True)
class DuplicateGroup:
    members: list[GroupMember]
    """Two or more images, the most original-looking first."""


def image_facts(key: str) -> ImageFacts:
    """Size and pixel count of the file a key names, read from the header only (Pillow opens lazily)."""
    path = Path(key)
    try:
        with Image.open(path) as image:
            width, height = image.size
        return ImageFacts(width, height, os.stat(path).st_size)
    except (OSError, ValueError, Image.DecompressionBombError):  # not a path, gone, or no image Pillow reads
        return ImageFacts()


def group_duplicates(
    keys: list[str],
    vectors: np.ndarray,
    pairs: np.ndarray,
    describe: Callable[[str], ImageFacts] = image_facts,
) -> list[DuplicateGroup]:
    """Groups of ``keys`` joined by ``pairs`` (``(M, 2)`` positions), largest group first.

    ``vectors`` are the keys' embeddings, row for row: a member's similarity is measured to the
    group's first member, which a member of a chain need not be paired with directly.
    """
    count = len(keys)
    if count == 0 or len(pairs) == 0:
        return []
    sparse = require("scipy.sparse", "duplicates", "grouping near-duplicates")
    csgraph = require("scipy.sparse.csgraph", "duplicates", "grouping near-duplicates")
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    unit = l2_normalize(np.asarray(vectors, dtype=np.float32))
    groups = []
    for label in np.flatnonzero(sizes >= 2):
        positions = np.flatnonzero(labels == label)
        facts = {int(position): describe(keys[position]) for position in positions}
        ordered = sorted(positions, key=lambda p: (-facts[int(p)].pixels, -facts[int(p)].bytes_per_pixel, keys[int(p)]))
        similarities = unit[ordered] @ unit[ordered[0]]
        members = [
            GroupMember(keys[int(p)], float(s), facts[int(p)]) for p, s in zip(ordered, similarities, strict=True)
        ]
        groups.append(DuplicateGroup(members))
    return sorted(groups, key=lambda group: (-len(group.members), group.members[0].key))


def find_duplicates(store: VectorStore, threshold: float, progress: bool = False) -> list[DuplicateGroup]:
    """The near-duplicate groups among everything ``store`` holds, at cosine >= ``threshold``.

    Memory grows with the pairs found and the images in them, not with the store.
    """
    positions: dict[str, int] = {}
    pairs = set()
    for first, second in store.similar_pairs(threshold, progress=progress):
        a, b = (positions.setdefault(key, len(positions)) for key in (first, second))
        pairs.add((min(a, b), max(a, b)))
    keys = list(positions)
    found = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return group_duplicates(keys, store.vectors(keys) if keys else np.zeros((0, 1), np.float32), found)


GROUP_COLUMNS = ("group", "rank", "key", "similarity", "width", "height", "bytes")
"""The csv columns: one row per member; ``rank`` 1 is the group's most original member."""


def write_groups(path: Path, groups: Sequence[DuplicateGroup], *, threshold: float, model: str) -> None:
    """The groups as csv (one row per member) or, for a ``.json`` path, one document with the settings."""
    rows = [
        {
            "group": number,
            "rank": rank,
            "key": member.key,
            "similarity": round(member.similarity, 6),
            "width": member.facts.width,
            "height": member.facts.height,
            "bytes": member.facts.file_size,
        }
        for number, group in enumerate(groups, start=1)
        for rank, member in enumerate(group.members, start=1)
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".json":
            grouped = [[row for row in rows if row["group"] == number] for number in range(1, len(groups) + 1)]
            json.dump({"model": model, "threshold": threshold, "groups": grouped}, handle, indent=1)
        else:
            writer = csv.DictWriter(handle, fieldnames=GROUP_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
