"""What ``duplicates`` costs at 100 000 images: pairs found through the store's index, not by comparing all pairs.

The copy descriptor is 512-d and whitened, so the collection is modelled as `vector_stores.clustered` 512-d
unit vectors (look-alike clusters of distinct photos) with planted copies: 1 photo in 100 gets
``--copies`` copies whose cosine to it is drawn from ``--copy-cosines`` (defaults: the held-out copies'
median cosines per edit kind in benchmarks/DUPLICATES.md, 0.47 for combined edits to 0.95 for flips). Embedding
100 000 images is not measured here (it is images/s in benchmarks/DUPLICATES.md, times 100 000).

For each index type, one run through the product's own parts: the vectors go into an embedded store
(`open_store`, chunks of 10 000), then `find_duplicates` at ``--threshold`` (default: the copy model's
calibrated one) runs the store's range search and groups the pairs. Reported: the time and the growth of
peak resident memory of ``find_duplicates``, the pairs and groups found, the planted copies found, and the
pairs that the approximate index finds out of those of exact search (FLAT).

    python benchmarks/duplicates_scale.py --count 100000 --out benchmarks/DUPLICATES_SCALE.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout before an installed one
from vector_stores import DIMENSION, clustered  # noqa: E402

from clip_image_encoder.models.backbones import backbone_of  # noqa: E402
from clip_image_encoder.models.identity import DUPLICATES_MODEL  # noqa: E402
from clip_image_encoder.search.duplicates import find_duplicates  # noqa: E402
from clip_image_encoder.search.stores import open_store  # noqa: E402

CHUNK = 10_000
COPY_COSINES = (0.65, 0.86, 0.69, 0.83, 0.85, 0.76, 0.95, 0.47)
"""Median original-copy cosines of the copy descriptor per edit kind (crop, resize, jpeg, colour, rotate, text,
flip, combined), from benchmarks/DUPLICATES.md's seed 0."""


def with_copies(photos: np.ndarray, copies: int, cosines: tuple[float, ...], seed: int) -> tuple[np.ndarray, int]:
    """The photos followed by ``copies`` copies of each 100th one, each at a cosine of ``cosines`` (in turn) to
    its photo: ``cos * photo + sin * u``, with ``u`` a random unit vector orthogonal to the photo."""
    rng = np.random.default_rng(seed + 1)
    originals = photos[::100]
    made = []
    for number in range(copies):
        noise = rng.standard_normal(originals.shape, dtype=np.float32)
        noise -= np.sum(noise * originals, axis=1, keepdims=True) * originals
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        cosine = np.array([cosines[(i * copies + number) % len(cosines)] for i in range(len(originals))], np.float32)
        made.append(cosine[:, None] * originals + np.sqrt(1 - cosine**2)[:, None] * noise)
    return np.concatenate([photos, *made]), len(originals) * copies


def status_mb(field: str) -> float:
    """``VmRSS:`` or ``VmHWM:`` (the peak since the last reset) of this process, in MB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def run(vectors: np.ndarray, planted: int, photos: int, index: str, threshold: float) -> dict:
    keys = [f"image-{number}" for number in range(len(vectors))]
    with (
        tempfile.TemporaryDirectory(prefix="duplicates-scale-") as folder,
        open_store(folder, DUPLICATES_MODEL, index) as store,
    ):
        started = time.perf_counter()
        for start in range(0, len(keys), CHUNK):
            store.upsert(keys[start : start + CHUNK], vectors[start : start + CHUNK])
        store.flush()
        inserted = time.perf_counter() - started
        Path("/proc/self/clear_refs").write_text("5")  # the peak := the current resident memory
        before = status_mb("VmRSS:")
        started = time.perf_counter()
        groups = find_duplicates(store, threshold)
        seconds = time.perf_counter() - started
        grown = status_mb("VmHWM:") - before
    pairs = {
        (min(a.key, b.key), max(a.key, b.key))
        for group in groups
        for i, a in enumerate(group.members)
        for b in group.members[i + 1 :]
    }
    originals = len(range(0, photos, 100))  # `with_copies` copies photos[::100]
    copies_per = planted // originals
    found = 0
    for number in range(planted):
        original, copy = keys[(number % originals) * 100], keys[photos + number]
        found += (min(original, copy), max(original, copy)) in pairs
    return {
        "index": index,
        "insert_s": inserted,
        "seconds": seconds,
        "rss_growth_mb": grown,
        "groups": len(groups),
        "in_groups": sum(len(group.members) for group in groups),
        "largest": max((len(group.members) for group in groups), default=0),
        "pairs": pairs,
        "planted_found": found / planted,
        "copies_per": copies_per,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="images in all, planted copies included")
    parser.add_argument("--copies", type=int, default=4, help="copies of each 100th photo")
    parser.add_argument("--copy-cosines", type=float, nargs="+", default=list(COPY_COSINES))
    parser.add_argument(
        "--spread",
        type=float,
        default=2.0,
        help="vector_stores.clustered's spread: at 2.0, 3.6e-4 of the pairs of distinct photos score >= 0.33 and "
        "3.8e-6 >= 0.40 (the held-out negatives of benchmarks/DUPLICATES.md: about 6e-4 >= 0.33)",
    )
    parser.add_argument("--threshold", type=float, default=backbone_of(DUPLICATES_MODEL).duplicate_threshold)
    parser.add_argument("--indexes", nargs="+", default=["FLAT", "IVF_FLAT"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    photos = round(args.count / (1 + args.copies / 100))
    vectors, planted = with_copies(clustered(photos, args.seed, args.spread), args.copies, tuple(args.copy_cosines), 0)
    runs = [run(vectors, planted, photos, index, args.threshold) for index in args.indexes]
    exact = next((one["pairs"] for one in runs if one["index"] == "FLAT"), None)
    lines = [
        "# `duplicates` at scale: pairs through the store's index",
        "",
        f"Command: `python benchmarks/duplicates_scale.py --count {args.count} --out {args.out}`",
        "",
        f"Machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores. {len(vectors):,} "
        f"{DIMENSION}-d vectors: {photos:,} photos (`vector_stores.clustered`, spread {args.spread}) and {planted:,} "
        f"planted copies ({args.copies} of every 100th photo, at cosines {', '.join(map(str, args.copy_cosines))} "
        f"to it, in turn); threshold {args.threshold} ({DUPLICATES_MODEL}'s default). The embedded store, as "
        "`duplicates` uses it; embedding the images is apart (images/s in benchmarks/DUPLICATES.md).",
        "",
        "| index | insert s | find_duplicates s | peak RSS growth MB | groups | largest | images in groups "
        "| pairs in groups | planted copies in their photo's group | FLAT's pairs found |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for one in runs:
        share = f"{len(one['pairs'] & exact) / max(len(exact), 1):.3f}" if exact is not None else "-"
        cells = [
            one["index"],
            f"{one['insert_s']:.1f}",
            f"{one['seconds']:.1f}",
            f"{one['rss_growth_mb']:.0f}",
            f"{one['groups']:,}",
            f"{one['largest']:,}",
            f"{one['in_groups']:,}",
            f"{len(one['pairs']):,}",
            f"{one['planted_found']:.3f}",
            share,
        ]
        lines.append(f"| {' | '.join(cells)} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
