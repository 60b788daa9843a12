"""Near-duplicate groups: every pair of indexed images at least ``threshold`` alike, joined into groups.

Pairs come from an exact range search in the index (`similar_pairs`); a group is a
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

import faiss
import numpy as np
from PIL import Image
from tqdm import tqdm

from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.extras import require
from clip_image_encoder.search.vector_index import VectorIndex


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


def similar_pairs(vectors: np.ndarray, threshold: float, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
    """Every pair of rows of l2-normalised ``vectors`` at cosine >= ``threshold``: ``(M, 2)`` positions, i < j.

    An exact range search (FAISS, inner product), ``batch_size`` rows at a time, so memory grows with
    the pairs found, not with N x N.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = faiss.IndexFlatIP(vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1)
    flat.add(vectors.reshape(len(vectors), flat.d))
    found = [np.zeros((0, 2), np.int64)]
    starts = range(0, len(vectors), batch_size)
    for start in tqdm(starts, desc="comparing", unit="batch", disable=not progress):
        rows = vectors[start : start + batch_size]
        limits, _, positions = flat.range_search(rows, float(threshold))
        queries = np.repeat(np.arange(start, start + len(rows)), np.diff(limits).astype(np.int64))
        keep = queries < positions  # each pair once, never an image with itself
        found.append(np.stack([queries[keep], positions[keep]], axis=1))
    return np.concatenate(found)


def find_duplicates(index: VectorIndex, threshold: float, progress: bool = False) -> list[DuplicateGroup]:
    """The near-duplicate groups among everything ``index`` holds, at cosine >= ``threshold``."""
    keys, vectors = index.items()
    return group_duplicates(keys, vectors, similar_pairs(vectors, threshold, progress=progress))


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
