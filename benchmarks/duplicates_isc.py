"""Near-duplicate detection measured as ISC21 measured descriptors: edited copies of real photos among distractors.

From real photos that ship in packages, a seeded sample of originals gets edited copies
(`copy_edits`: crop, resize, JPEG, colour, rotation, text, flip and combinations, each kind dealt
equally often); the other originals are distractors with no copy. Every image is written to a file
and embedded by each model as the command line embeds files. Then:

- pairs, as the 2021 Image Similarity Challenge scored descriptors (Douze et al. 2021): every
  unordered pair of images is ranked by cosine over the whole collection; the positives are the
  pairs of one family (an original with a copy, and two copies of one original). Reported: the
  micro-average precision (area under the precision-recall curve of the global ranking, recall
  over every positive pair), precision/recall/F1 at fixed thresholds, recall at precision 0.9,
  and the threshold of the best F1;
- the product: `find_duplicates` over an embedded store (exact, FLAT) of the embeddings, as ``clip-image-encoder
  duplicates`` runs it, at every threshold of `CALIBRATION_GRID`: pair precision and recall of its
  groups (every pair inside a group counts as predicted). The default threshold is calibrated on
  these (`CALIBRATION_RULE`) rather than on the pairs, since a group joins chains of pairs and what a
  user gets is groups. At the calibrated threshold (or ``--threshold``) the report details the
  groups: how many, how many are led by their original, and the recall per edit kind.

Trained on some photos, calibrated on others, scored on others again (``--split families``, the default):
every photo belongs to one of three fixed parts, by a hash of its name (`photo_part`): the *training* part,
on which descriptors may be trained or whitened (``benchmarks/copy_whitening.py`` learns the shipped
whitening there, and nowhere else), the *calibration* part, on which thresholds are calibrated (a
threshold calibrated on the whitening's own photos came out too low: a whitening spreads apart the
photos it was fitted on more than others), and the *held-out* part, on which every figure of the report
is measured. Each seed of ``--seeds`` draws a calibration and a held-out collection of its own (other
telescope photos, families and edits): the threshold is calibrated on the seed's calibration collection,
the default is the median over the seeds, and the held-out collections are scored at it. The part is
fixed by the name, not drawn per seed, so that no seed scores a photo that a shipped whitening has seen.
An everyday photo that is the same picture as one of an earlier part (training, then calibration) is left
out. ``--split none`` is the earlier protocol: one collection per seed, calibrated and scored on itself
(200 originals, 80 with copies).

The photos (``--photos DIR`` replaces them with yours):
- everyday photos: scikit-image's and scikit-learn's (`SKIMAGE_PHOTOS`, china, flower, in the venv)
  and those of Debian packages (`DEBIAN_PHOTOS`: wallpapers of mate-backgrounds, lomiri-wallpapers
  and plasma-workspace-wallpapers that are photographs, and the sample photos of opencv-doc);
- telescope photos of Debian's stellarium-data (``/usr/share/stellarium/nebulae/default``), to fill
  the collection up to ``--originals``: hard negatives, like the similar-but-distinct shots of a
  photo library, since many are a bright blob or a star field on black.
Near-duplicates among the photos themselves would count as false positives, so they are kept out:
- by name: scikit-image's ``cat`` (it is ``chelsea``) and ``motorcycle_right`` (the stereo twin of
  ``motorcycle_left``), and the second image of opencv-doc's stereo pairs, video frames, views of
  one scene and edited samples (`DEBIAN_PHOTOS` lists one of each), the recoloured and rescaled
  variants of one wallpaper;
- by the sky: of the telescope photos whose footprints overlap (the catalogue's ``textures.json``
  gives each photo's corners in RA/Dec: mosaics, one object shot twice), only the first is kept;
- by the pixels: an original whose 32x32 grey thumbnail correlates >= `SAME_PICTURE_COARSE` with an
  earlier one's and whose 64x64 detail (the thumbnail less its blur) correlates >= `SAME_PICTURE_DETAIL`
  is the same picture rescaled or recoloured, and is left out (the detail test keeps distinct
  telescope photos of a centred blob, whose coarse thumbnails alone correlate above 0.9).
The report lists the highest-scoring negative pairs that remain, for inspection.

    apt-get install stellarium-data mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 \\
        plasma-workspace-wallpapers opencv-doc
    python benchmarks/duplicates_isc.py --out benchmarks/DUPLICATES.md
    python benchmarks/duplicates_isc.py --model efficientnet-lite0 efficientnet-lite0-copy \\
        --out benchmarks/COPY_DETECTION.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # copy_edits, run as a script from anywhere
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' tiny random model

from copy_edits import EDITS, edited_copies
from tiny_clip import save_tiny_vision_tower

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import ImageEncoder, ImageItem
from clip_image_encoder.encoding.outputs import l2_normalize
from clip_image_encoder.errors import EmbeddingError
from clip_image_encoder.models.backbones import backbone_of
from clip_image_encoder.search.duplicates import DuplicateGroup, find_duplicates
from clip_image_encoder.search.stores import open_store

SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
"""scikit-image's photos (plus ``motorcycle_left``); its drawings and synthetic images are left out."""
DEBIAN_PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mate-backgrounds": ("/usr/share/backgrounds/mate/nature", (
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg",
    )),
    "lomiri-wallpapers-16.04": ("/usr/share/backgrounds", (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
    )),
    "lomiri-wallpapers-20.04": ("/usr/share/backgrounds", ("Kleiber_by_Lukas_Baubkus.jpg",)),
    "plasma-workspace-wallpapers": ("/usr/share/wallpapers", (
        "BytheWater/contents/images/1920x1200.jpg", "ColdRipple/contents/images/1920x1200.jpg",
        "ColorfulCups/contents/images/2560x1600.jpg", "DarkestHour/contents/images/1920x1200.jpg",
        "EveningGlow/contents/images/1920x1200.jpg", "FallenLeaf/contents/images/1920x1200.jpg",
        "Grey/contents/images/1920x1200.jpg", "Kite/contents/images/1920x1200.jpg",
        "OneStandsOut/contents/images/1920x1200.jpg", "Path/contents/images/1920x1200.jpg",
        "summer_1am/contents/images/1920x1200.jpg",
    )),
    "opencv-doc": ("/usr/share/doc/opencv-doc/examples", (
        "data/aero1.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/basketball1.png",
        "data/board.jpg", "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg", "data/chicky_512.png",
        "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg", "data/left01.jpg",
        "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg", "data/orange.jpg",
        "data/pca_test1.jpg", "data/rubberwhale1.png", "data/squirrel_cls.jpg", "data/stuff.jpg", "data/sudoku.png",
        "alphamat/input_images/plant.jpg", "dnn_superres/butterfly.png", "hfs/data/000.jpg", "hfs/data/001.jpg",
        "hfs/data/002.jpg", "reg/home.png", "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg",
        "text/scenetext04.jpg", "text/scenetext05.jpg", "text/scenetext06.jpg",
    )),
}  # fmt: skip
"""Debian package: (folder, the photographs in it). Left out: drawings and renderings, the other sizes and
colourings of one wallpaper, and the second image of opencv-doc's pairs (aero3, aloeR, basketball2,
ela_modified, graf3, leuvenB, rubberwhale2, left02-14 and right*: one chessboard in one room; box.png: the
box of box_in_scene)."""
STELLARIUM = Path("/usr/share/stellarium/nebulae/default")
MAX_SIDE = 1280
"""Longer originals are downscaled to this: multi-megapixel decoding would otherwise dominate the run."""
SAME_PICTURE_COARSE, SAME_PICTURE_DETAIL = 0.9, 0.8
"""Measured: a picture and its rescaled, recoloured or next-video-frame self score >= 0.97 and >= 0.87;
distinct telescope photos up to 0.94 and 0.41; two views of one scene below 0.76 and 0.3."""
ORIGINAL_QUALITY, COPY_QUALITY = 95, 85
"""JPEG qualities of the files: an original as a camera writes it, a copy re-encoded once more on its way."""
TINY_RANDOM_CLIP = "tiny-random-clip"
"""``--model`` value that builds the tests' tiny random CLIP (a sanity baseline, not a calibration)."""
TINY_RANDOM_CLIP_LABEL = "tiny random CLIP (random weights: a sanity baseline only)"
CURVE_THRESHOLDS = (*np.round(np.arange(0.20, 0.90, 0.05), 2), *np.round(np.arange(0.90, 0.995, 0.01), 2))
GROUP_THRESHOLDS = (0.30, 0.40, 0.50, 0.60, 0.70, 0.75, 0.80, 0.85, 0.90, 0.92, 0.95)
"""Thresholds of the report's table of groups (with the calibrated one and the one used)."""
CALIBRATION_GRID = tuple(round(0.20 + 0.01 * step, 2) for step in range(80))
TARGET_PRECISION = 0.95
"""The operating point the default threshold is calibrated for: groups whose pairs are this precise (issue 22)."""
CALIBRATION_RULE = (
    f"the lowest threshold of 0.20, 0.21 ... 0.99 from which the pair precision of find_duplicates' groups over "
    f"the seed's calibration collection stays >= {TARGET_PRECISION} at every higher one (a user's groups should "
    "hold copies, not look-alikes: precision first, then as much recall as that leaves; if no threshold gets "
    "there, the one of the best pair F1); the default is the median over the seeds (the lower middle one for an "
    "even count)"
)
TOP_NEGATIVES = 8
HELD_OUT_SHARE, CALIBRATION_SHARE = 0.5, 0.2
"""The shares of the photos in the held-out and the calibration part (`photo_part`); the rest is for training."""
PARTS = ("training", "calibration", "held-out")
"""`photo_part`'s parts, in the order their photos are deduplicated against each other."""
SPLIT_SIZES = {"families": (100, 40), "none": (200, 80)}
"""Default ``--originals`` and ``--with-copies`` per ``--split``: a part's collection has the whole's mix of photos
(about as many everyday photos as telescope ones) and the same share of families with copies."""


# --- the photos ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    name: str
    """Where it comes from, e.g. ``skimage/astronaut`` or ``stellarium/m42.png``."""
    load: Callable[[], Image.Image]


def _array_photo(name: str, load: Callable[[], np.ndarray]) -> Photo:
    return Photo(name, lambda: Image.fromarray(load()))


def _file_photo(name: str, path: Path) -> Photo:
    def load() -> Image.Image:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "LA", "P"):  # telescope photos fade to transparent: put them on black
                return Image.alpha_composite(Image.new("RGBA", image.size, "black"), image.convert("RGBA"))
            return image.convert("RGB")

    return Photo(name, load)


def everyday_photos() -> list[Photo]:
    """The photos of scikit-image, scikit-learn and `DEBIAN_PHOTOS`: people, animals, objects, streets, nature."""
    from skimage import data as skimage_data
    from sklearn.datasets import load_sample_images

    photos = [_array_photo(f"skimage/{name}", getattr(skimage_data, name)) for name in SKIMAGE_PHOTOS]
    photos.append(_array_photo("skimage/motorcycle_left", lambda: skimage_data.stereo_motorcycle()[0]))
    samples = load_sample_images()
    photos += [
        _array_photo(f"sklearn/{Path(name).name}", lambda image=image: image)
        for name, image in zip(samples.filenames, samples.images, strict=True)
    ]
    for package, (folder, names) in DEBIAN_PHOTOS.items():
        for name in names:
            _require(Path(folder) / name, package)
            photos.append(_file_photo(f"{package}/{name}", Path(folder) / name))
    return photos


def telescope_photos() -> tuple[list[Photo], int]:
    """Stellarium's nebula photos, one per patch of sky, and how many overlapping ones were left out."""
    _require(STELLARIUM / "textures.json", "stellarium-data")
    text = (STELLARIUM / "textures.json").read_text()
    tiles = json.loads(re.sub(r"(?<=[\[,:\s])(-?)\.(\d)", r"\g<1>0.\2", text))["subTiles"]  # it writes -.97
    boxes = [_sky_box(tile["worldCoords"][0]) for tile in tiles]
    kept: list[int] = []
    for number, box in enumerate(boxes):
        if not any(_boxes_overlap(box, boxes[other]) for other in kept):
            kept.append(number)
    names = [tiles[number]["imageUrl"] for number in kept]
    return [_file_photo(f"stellarium/{name}", STELLARIUM / name) for name in names], len(tiles) - len(kept)


def _sky_box(corners: list[list[float]]) -> tuple[float, float, float, float]:
    """RA and Dec ranges in degrees of a photo's corners; an RA range across 0h is given past 360."""
    ra = [corner[0] % 360 for corner in corners]
    if max(ra) - min(ra) > 180:
        ra = [value + 360 if value < 180 else value for value in ra]
    dec = [corner[1] for corner in corners]
    return min(ra), max(ra), min(dec), max(dec)


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    if a[3] < b[2] or b[3] < a[2]:
        return False
    return any(a[0] <= b[1] + shift and b[0] + shift <= a[1] for shift in (-360, 0, 360))


def folder_photos(folder: Path) -> list[Photo]:
    """Every image file under ``folder`` (``--photos``), sorted; each is taken for a distinct picture."""
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in suffixes)
    return [_file_photo(path.relative_to(folder).as_posix(), path) for path in paths]


def _require(path: Path, package: str) -> None:
    if not path.exists():
        sys.exit(f"error: {path} is missing: install the Debian package with 'apt-get install {package}'")


def _fingerprint(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-norm 32x32 grey thumbnail and 64x64 detail (thumbnail less its blur): the dot products
    of two fingerprints' parts are the correlations that `SAME_PICTURE_COARSE` and `SAME_PICTURE_DETAIL` bound."""
    coarse = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    grey = image.convert("L").resize((64, 64), Image.Resampling.BOX)
    detail = np.asarray(grey, dtype=np.float64) - np.asarray(grey.filter(ImageFilter.BoxBlur(4)), dtype=np.float64)
    return _unit(coarse), _unit(detail)


def _unit(values: np.ndarray) -> np.ndarray:
    flat = values.ravel() - values.mean()
    return flat / max(float(np.linalg.norm(flat)), 1e-9)


def _same_picture(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(a[0] @ b[0] >= SAME_PICTURE_COARSE and a[1] @ b[1] >= SAME_PICTURE_DETAIL)


Fingerprint = tuple[np.ndarray, np.ndarray]


def _loaded(photo: Photo) -> Image.Image:
    """The photo in RGB, downscaled to `MAX_SIDE`."""
    image = photo.load().convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def distinct_originals(
    photos: list[Photo], count: int, seen: list[tuple[str, Fingerprint]] | None = None
) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """The first ``count`` photos that are no rescaled or recoloured copy of an earlier one (or of a ``seen`` one:
    the other part's), downscaled to `MAX_SIDE`, and the names of those left out as such copies."""
    kept: list[tuple[str, Image.Image]] = []
    known: list[tuple[str, Fingerprint]] = list(seen or [])
    dropped: list[str] = []
    for photo in photos:
        if len(kept) == count:
            break
        image = _loaded(photo)
        fingerprint = _fingerprint(image)
        twins = [name for name, other in known if _same_picture(other, fingerprint)]
        if twins:
            dropped.append(f"{photo.name} (same picture as {twins[0]})")
            continue
        kept.append((photo.name, image))
        known.append((photo.name, fingerprint))
    return kept, dropped


def photo_part(name: str) -> str:
    """One of `PARTS`, fixed by a hash of the photo's name, so the same in every seed and run (a whitening
    learned on the training part never sees a photo that any seed calibrates on or scores). The held-out part
    is the first half of the hash's range, as when there were two parts, so it holds the same photos."""
    share = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    if share < HELD_OUT_SHARE:
        return "held-out"
    return "calibration" if share < HELD_OUT_SHARE + CALIBRATION_SHARE else "training"


def earlier_parts_fingerprints(args: argparse.Namespace, part: str) -> list[tuple[str, Fingerprint]]:
    """The fingerprints of the everyday photos (or of all of ``--photos``') of the parts before ``part`` in `PARTS`,
    which an original of ``part`` must not match. Telescope photos need none: no two kept ones overlap in the sky
    (`telescope_photos`)."""
    earlier = PARTS[: PARTS.index(part)]
    photos = folder_photos(Path(args.photos)) if args.photos is not None else everyday_photos()
    return [(photo.name, _fingerprint(_loaded(photo))) for photo in photos if photo_part(photo.name) in earlier]


# --- the collection: originals, edited copies, distractors, as files ------------------------------------------


@dataclass(frozen=True)
class Item:
    key: str
    """The file's path, as the index keys it."""
    source: str
    """The photo it was made from."""
    family: int | None
    """The number of its original's family; None for a distractor (an original with no copy)."""
    kind: str | None = None
    """The edit kind of a copy; None for an original."""
    description: str = ""


@dataclass(frozen=True)
class Collection:
    items: list[Item]
    sources: str
    """One line: where the originals came from and what was left out."""
    part: str | None = None
    """The part of the photos it was drawn from (`photo_part`); None for ``--split none``."""


def build_collection(
    originals: list[tuple[str, Image.Image]], with_copies: int, copies: int, rng: random.Random, folder: Path
) -> list[Item]:
    """Write every original, and ``copies`` edited copies of ``with_copies`` of them, as JPEG files under ``folder``.

    Kinds are dealt in turn over the families, so each kind is about equally frequent. File names
    are random, so no order of names can tell an original from its copies.
    """
    families = set(rng.sample(range(len(originals)), min(with_copies, len(originals))))
    kinds = list(EDITS)
    items: list[Item] = []
    family = 0
    for number, (name, image) in enumerate(originals):
        if number not in families:
            items.append(Item(_save(image, folder, ORIGINAL_QUALITY, rng), name, None))
            continue
        items.append(Item(_save(image, folder, ORIGINAL_QUALITY, rng), name, family))
        dealt = [kinds[(family * copies + i) % len(kinds)] for i in range(copies)]
        for copy in edited_copies(image, random.Random(f"{rng.random()}"), copies, dealt):
            key = _save(copy.image, folder, COPY_QUALITY, rng)
            items.append(Item(key, name, family, copy.kind, copy.description))
        family += 1
    return items


def _save(image: Image.Image, folder: Path, quality: int, rng: random.Random) -> str:
    path = folder / f"{rng.getrandbits(48):012x}.jpg"
    image.save(path, format="JPEG", quality=quality)
    return str(path)


def load_collection(
    args: argparse.Namespace,
    seed: int,
    folder: Path,
    part: str | None = None,
    seen: list[tuple[str, Fingerprint]] | None = None,
) -> Collection:
    """The originals (packaged photos or ``--photos``) of ``part`` (None: all), deduplicated (also against
    ``seen``), sampled, edited and written under ``folder``."""
    rng = random.Random(seed if part is None else f"{seed}/{part}")
    in_part = [] if part is None else [f"the {part} part"]
    if args.photos is not None:
        photos, overlapping = _of_part(folder_photos(Path(args.photos)), part), 0
        rng.shuffle(photos)
        origin = " of ".join([*in_part, f"{args.photos}"])
    else:
        everyday = _of_part(everyday_photos(), part)
        telescope, overlapping = telescope_photos()
        telescope = _of_part(telescope, part)
        rng.shuffle(telescope)
        photos = everyday + telescope
        origin = " of ".join([*in_part, f"scikit-image, scikit-learn, {', '.join(DEBIAN_PHOTOS)} and stellarium-data"])
    originals, dropped = distinct_originals(photos, args.originals, seen)
    items = build_collection(originals, args.with_copies, args.copies_per_original, rng, folder)
    counts = _count_by_source(name for name, _ in originals)
    sources = (
        f"{len(originals)} originals from {origin} ({counts}); "
        f"{overlapping} telescope photos left out for overlapping the sky of another; "
        f"{len(dropped)} left out as the same picture as another{': ' + '; '.join(dropped) if dropped else ''}"
    )
    return Collection(items, sources, part)


def _of_part(photos: list[Photo], part: str | None) -> list[Photo]:
    return [photo for photo in photos if part is None or photo_part(photo.name) == part]


def _count_by_source(names: Iterator[str]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        prefix = name.split("/")[0] if "/" in name else "folder"
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{prefix} {count}" for prefix, count in counts.items())


# --- embedding ------------------------------------------------------------------------------------------------


def tiny_random_clip(folder: Path) -> str:
    """The tests' tiny random CLIP vision tower (``tests/tiny_clip.py``), saved where a user's folder would be."""
    return str(save_tiny_vision_tower(folder))


def embed(model: str, keys: list[str]) -> tuple[np.ndarray, float]:
    """``(N, D)`` l2-normalised embeddings of the files, as the command line embeds them, and the seconds taken
    (model loading and warm-up excluded)."""
    options = EncoderOptions(pretrained_model_name_or_path=model)
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        started = time.perf_counter()
        results = list(encoder.encode((ImageItem(key, rotation=options.rotation) for key in keys), options))
        elapsed = time.perf_counter() - started
    failed = [
        f"{key}: {result}" for key, result in zip(keys, results, strict=True) if isinstance(result, EmbeddingError)
    ]
    if failed:
        raise RuntimeError("images of the collection could not be embedded:\n" + "\n".join(failed))
    return l2_normalize(np.stack(results).astype(np.float32)), elapsed


# --- pair metrics (ISC21) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankedPairs:
    """Every unordered pair of the collection, best score first, with whether it is a positive."""

    scores: np.ndarray
    hits: np.ndarray
    first: np.ndarray
    second: np.ndarray

    @classmethod
    def of(cls, vectors: np.ndarray, families: np.ndarray) -> RankedPairs:
        """``families``: ``(N,)`` family numbers, -1 for distractors (no pair of theirs is positive)."""
        first, second = np.triu_indices(len(vectors), k=1)
        scores = np.einsum("ij,ij->i", vectors[first], vectors[second])
        hits = (families[first] == families[second]) & (families[first] >= 0)
        order = np.argsort(-scores, kind="stable")
        return cls(scores[order], hits[order], first[order], second[order])

    @property
    def positives(self) -> int:
        return int(self.hits.sum())

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall after each rank of the global list."""
        true_positives = np.cumsum(self.hits)
        return true_positives / np.arange(1, len(self.hits) + 1), true_positives / self.positives

    def restricted(self, keep: np.ndarray) -> RankedPairs:
        """The pairs of which ``keep`` (``(N,)`` bool, per image) selects both images."""
        mask = keep[self.first] & keep[self.second]
        return RankedPairs(self.scores[mask], self.hits[mask], self.first[mask], self.second[mask])

    def micro_average_precision(self) -> float:
        """ISC21's µAP: the sum over the ranked list of precision times the recall gained at each rank."""
        precision, _ = self.precision_recall()
        return float(precision[self.hits].sum() / self.positives)

    def at(self, threshold: float) -> tuple[float, float, float, int]:
        """Precision, recall, F1 and the number of pairs predicted at cosine >= ``threshold``."""
        predicted = int(np.searchsorted(-self.scores, -threshold, side="right"))
        found = int(self.hits[:predicted].sum())
        precision = found / predicted if predicted else 1.0
        recall = found / self.positives
        return precision, recall, _f1(precision, recall), predicted

    def best_f1(self) -> tuple[float, float]:
        """The score threshold whose F1 is highest, and that F1."""
        precision, recall = self.precision_recall()
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        rank = int(np.argmax(f1))
        return float(self.scores[rank]), float(f1[rank])

    def recall_at_precision(self, floor: float) -> tuple[float, float] | None:
        """The highest recall reached with precision >= ``floor``, and its threshold; None if never reached."""
        precision, recall = self.precision_recall()
        ranks = np.flatnonzero(precision >= floor)
        if len(ranks) == 0:
            return None
        rank = ranks[np.argmax(recall[ranks])]
        return float(recall[rank]), float(self.scores[rank])


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# --- the product's groups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupScore:
    groups: int
    largest: int
    """Images in the largest group."""
    precision: float
    recall: float
    led_by_original: int
    """Groups whose first member is an original with copies."""
    with_original: int
    """Groups that hold an original with copies."""
    pure: int
    """Groups that hold one family and nothing else."""
    grouped: set[tuple[int, int]]
    """Every predicted pair, as positions (i < j)."""


def score_groups(groups: list[DuplicateGroup], items: list[Item]) -> GroupScore:
    """Pair precision and recall of groups (every pair inside a group predicted) and how they are ordered."""
    position = {item.key: number for number, item in enumerate(items)}
    grouped: set[tuple[int, int]] = set()
    led = with_original = pure = 0
    for group in groups:
        members = [position[member.key] for member in group.members]
        grouped.update((min(a, b), max(a, b)) for i, a in enumerate(members) for b in members[i + 1 :])
        families = {items[m].family for m in members}
        pure += len(families) == 1 and None not in families
        originals = [m for m in members if items[m].kind is None and items[m].family is not None]
        with_original += bool(originals)
        led += members[0] in originals
    precision, recall = pair_precision_recall(grouped, items)
    largest = max((len(group.members) for group in groups), default=0)
    return GroupScore(len(groups), largest, precision, recall, led, with_original, pure, grouped)


def pair_precision_recall(
    grouped: set[tuple[int, int]], items: list[Item], keep: np.ndarray | None = None
) -> tuple[float, float]:
    """Precision and recall of predicted pairs; with ``keep`` (``(N,)`` bool), of the pairs of kept images only."""
    positives = _positive_pairs(items)
    if keep is not None:
        grouped = {(a, b) for a, b in grouped if keep[a] and keep[b]}
        positives = {(a, b) for a, b in positives if keep[a] and keep[b]}
    found = len(grouped & positives)
    return (found / len(grouped) if grouped else 1.0), found / max(len(positives), 1)


def _positive_pairs(items: list[Item]) -> set[tuple[int, int]]:
    by_family: dict[int, list[int]] = {}
    for number, item in enumerate(items):
        if item.family is not None:
            by_family.setdefault(item.family, []).append(number)
    return {(a, b) for members in by_family.values() for i, a in enumerate(members) for b in members[i + 1 :]}


def group_with(
    vectors: np.ndarray, items: list[Item], thresholds: list[float], model: str
) -> dict[float, list[DuplicateGroup]]:
    """`find_duplicates` over an exact (FLAT) embedded store of the embeddings at each threshold, as
    ``clip-image-encoder duplicates`` runs it."""
    with tempfile.TemporaryDirectory(prefix="duplicates-isc-") as db, open_store(Path(db), model, "FLAT") as index:
        index.upsert([item.key for item in items], vectors)
        return {threshold: find_duplicates(index, threshold) for threshold in thresholds}


def photo_kinds(items: list[Item]) -> np.ndarray:
    """``(N,)`` "telescope" or "everyday": the two kinds of photo make very different negatives."""
    return np.array(["telescope" if item.source.startswith("stellarium/") else "everyday" for item in items])


@dataclass(frozen=True)
class KindScore:
    kind: str
    copies: int
    median_cosine: float
    lowest_cosine: float
    pair_recall: float
    """Original-copy pairs at cosine >= the threshold."""
    group_recall: float
    """Copies in their original's group."""
    everyday_group_recall: float | None
    """The same among copies of everyday photos (None without any, or without telescope photos to tell apart)."""


def score_kinds(vectors: np.ndarray, items: list[Item], threshold: float, grouped: set[tuple[int, int]]) -> list:
    """Recall of original-copy pairs per edit kind, worst first: which edits the backbone misses."""
    original_of = {item.family: n for n, item in enumerate(items) if item.kind is None and item.family is not None}
    scores: list[KindScore] = []
    for kind in EDITS:
        copies = [n for n, item in enumerate(items) if item.kind == kind]
        if not copies:
            continue
        originals = [original_of[items[n].family] for n in copies]
        cosines = np.einsum("ij,ij->i", vectors[copies], vectors[originals])
        in_group = np.array([(min(o, c), max(o, c)) in grouped for o, c in zip(originals, copies, strict=True)])
        everyday = photo_kinds(items)[copies] == "everyday"
        scores.append(
            KindScore(
                kind,
                len(copies),
                float(np.median(cosines)),
                float(cosines.min()),
                float(np.mean(cosines >= threshold)),
                float(np.mean(in_group)),
                float(np.mean(in_group[everyday])) if everyday.any() and not everyday.all() else None,
            )
        )
    return sorted(scores, key=lambda score: (score.group_recall, score.pair_recall))


# --- one model, and the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRun:
    model: str
    label: str
    dimensions: int
    embed_seconds: float
    pairs: RankedPairs
    threshold: float
    threshold_origin: str
    groups: GroupScore
    group_curve: dict[float, GroupScore]
    """The groups' scores at every threshold of `CALIBRATION_GRID` and `GROUP_THRESHOLDS`, and the one used."""
    calibrated: float = 0.0
    """The seed's calibrated threshold (`CALIBRATION_RULE`), on its calibration collection."""
    calibration_map: float = 0.0
    """µAP on the calibration collection (the scored one itself with ``--split none``)."""
    calibration_groups: GroupScore | None = None
    """The calibration collection's groups at the calibrated threshold."""
    default: float | None = None
    """The backbone's default (`Backbone.duplicate_threshold`) when it ran."""
    kinds: list[KindScore] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    items: list[Item] = field(default_factory=list)
    """The scored collection, row for row of ``vectors``."""


def run_model(
    model: str, label: str, items: list[Item], calibration: list[Item] | None, given: float | None
) -> ModelRun:
    """Embed the scored collection with one model, score its pairs, and its groups at every threshold of the grid;
    calibrate on ``calibration`` (None: on the scored collection itself). The detail (groups and kinds) is at the
    calibrated threshold until `with_detail` says otherwise."""
    vectors, seconds = embed(model, [item.key for item in items])
    pairs = RankedPairs.of(vectors, _families(items))
    default = backbone_of(model).duplicate_threshold
    thresholds = sorted({*CALIBRATION_GRID, *GROUP_THRESHOLDS, *(t for t in (given, default) if t is not None)})
    curve = {t: score_groups(groups, items) for t, groups in group_with(vectors, items, thresholds, model).items()}
    calibration_map, calibration_curve = pairs.micro_average_precision(), curve
    if calibration is not None:
        calibration_vectors, _ = embed(model, [item.key for item in calibration])
        calibration_map = RankedPairs.of(calibration_vectors, _families(calibration)).micro_average_precision()
        grouped = group_with(calibration_vectors, calibration, list(CALIBRATION_GRID), model)
        calibration_curve = {t: score_groups(groups, calibration) for t, groups in grouped.items()}
    calibrated = calibrated_threshold(calibration_curve)
    run = ModelRun(model, label, vectors.shape[1], seconds, pairs, calibrated, "", curve[calibrated], curve)
    run = replace(
        run,
        calibrated=calibrated,
        calibration_map=calibration_map,
        calibration_groups=calibration_curve[calibrated],
        default=default,
        vectors=vectors,
        items=items,
    )
    return with_detail(run, items, calibrated, "")


def calibrated_threshold(curve: dict[float, GroupScore]) -> float:
    """`CALIBRATION_RULE` over the groups of a calibration collection at every threshold of `CALIBRATION_GRID`."""
    precise: float | None = None
    for threshold in sorted(CALIBRATION_GRID, reverse=True):
        score = curve[threshold]
        if score.groups and score.precision < TARGET_PRECISION:
            break
        precise = threshold
    if precise is not None and curve[precise].groups:
        return precise
    return max(CALIBRATION_GRID, key=lambda t: (_f1(curve[t].precision, curve[t].recall), t))


def _families(items: list[Item]) -> np.ndarray:
    """``(N,)`` family numbers, -1 for distractors."""
    return np.array([-1 if item.family is None else item.family for item in items])


def with_detail(run: ModelRun, items: list[Item], threshold: float, origin: str) -> ModelRun:
    """The run with its groups and edit kinds at ``threshold`` (one of its curve's)."""
    groups = run.group_curve[threshold]
    kinds = score_kinds(run.vectors, items, threshold, groups.grouped)
    return replace(run, threshold=threshold, threshold_origin=origin, groups=groups, kinds=kinds)


def detail_threshold(runs: list[ModelRun], given: float | None) -> tuple[float, str]:
    """The threshold the report details for one model: ``--threshold``, else the median calibrated one."""
    if given is not None:
        return given, "given with --threshold"
    return statistics.median_low(run.calibrated for run in runs), "the median calibrated threshold over the seeds"


def model_section(run: ModelRun, items: list[Item]) -> list[str]:
    """The markdown of one model: figures, the precision-recall table, groups, kinds, top negatives."""
    pairs = run.pairs
    best_threshold, best_f1 = pairs.best_f1()
    at_90 = pairs.recall_at_precision(0.9)
    at_95 = pairs.recall_at_precision(0.95)
    precision, recall, f1, predicted = pairs.at(run.threshold)
    lines = [
        f"## {run.label}",
        "",
        f"- embedding: {len(items)} images in {run.embed_seconds:.1f} s, "
        f"{len(items) / run.embed_seconds:.1f} images/s ({run.dimensions}-d; decode, preprocessing and model, "
        "loading excluded)",
        f"- pairs: {len(pairs.scores):,} of which {pairs.positives:,} positive; "
        f"**µAP {pairs.micro_average_precision():.3f}**",
        f"- best F1 over all pairs {best_f1:.3f}, at cosine >= {best_threshold:.4f}",
        "- recall at precision 0.9: "
        + (f"{at_90[0]:.3f} (cosine >= {at_90[1]:.4f})" if at_90 else "not reachable")
        + "; at precision 0.95: "
        + (f"{at_95[0]:.3f} (cosine >= {at_95[1]:.4f})" if at_95 else "not reachable"),
        f"- calibrated threshold on this seed's collection: {run.calibrated:.2f}",
        f"- at the threshold used for the groups, {run.threshold:.2f} ({run.threshold_origin}): pairs "
        f"precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f} ({predicted:,} pairs predicted)",
        "",
        *_curve_table(pairs),
        *_sources_table(run, items),
        *_groups_lines(run),
        *_group_curve_table(run, items),
        *_kinds_table(run),
        *_negatives_table(run, items),
    ]
    return lines


def _curve_table(pairs: RankedPairs) -> list[str]:
    rows = ["### Precision-recall over all pairs", "", "| cosine >= | precision | recall | F1 | pairs predicted |"]
    rows.append("| --- | --- | --- | --- | --- |")
    for threshold in CURVE_THRESHOLDS:
        precision, recall, f1, predicted = pairs.at(float(threshold))
        rows.append(f"| {threshold:.2f} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {predicted:,} |")
    return [*rows, ""]


def _sources_table(run: ModelRun, items: list[Item]) -> list[str]:
    """The pairs within each kind of photo: everyday photos and telescope photos make different negatives."""
    kinds = photo_kinds(items)
    if len(set(kinds)) < 2:
        return []
    rows = [
        "### Pairs within each kind of photo",
        "",
        f"| photos | images | positive pairs | µAP | precision at >= {run.threshold:.2f} | recall at >= "
        f"{run.threshold:.2f} | best F1 at |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("everyday", "telescope"):
        pairs = run.pairs.restricted(kinds == kind)
        precision, recall, _, _ = pairs.at(run.threshold)
        rows.append(
            f"| {kind} | {int((kinds == kind).sum())} | {pairs.positives:,} | {pairs.micro_average_precision():.3f} | "
            f"{precision:.3f} | {recall:.3f} | {pairs.best_f1()[0]:.4f} |"
        )
    return [
        *rows,
        "",
        "Pairs of an everyday photo with a telescope photo are all negatives; they are left out here.",
        "",
    ]


def _groups_lines(run: ModelRun) -> list[str]:
    groups = run.groups
    return [
        f"### Groups of `find_duplicates` at cosine >= {run.threshold:.2f}",
        "",
        f"- {groups.groups} groups; pair precision {groups.precision:.3f}, pair recall {groups.recall:.3f}, "
        f"F1 {_f1(groups.precision, groups.recall):.3f} (every pair inside a group counts as predicted, so a "
        "chain joining two families costs many pairs)",
        f"- {groups.pure} of them hold one family and nothing else; of the {groups.with_original} holding "
        f"an original with copies, {groups.led_by_original} list that original first",
        "",
    ]


def _group_curve_table(run: ModelRun, items: list[Item]) -> list[str]:
    """The groups at other thresholds: what ``--threshold`` trades."""
    kinds = photo_kinds(items)
    split = len(set(kinds)) == 2
    header = "| cosine >= | groups | largest group | pair precision | pair recall | F1 |"
    header += " everyday: precision | everyday: recall | telescope: precision | telescope: recall |" if split else ""
    rows = ["#### The groups across thresholds", "", header, "| --- " * (header.count("|") - 1) + "|"]
    marks = [(run.calibrated, "this seed's calibrated"), (run.threshold, "detailed above")]
    marks += [(run.default, "backbone's default")] if run.default is not None else []
    for threshold in sorted({*GROUP_THRESHOLDS, *(t for t, _ in marks)}):
        score = run.group_curve[threshold]
        mark = ", ".join(label for t, label in marks if t == threshold)
        row = (
            f"| {threshold:.2f}{f' ({mark})' if mark else ''} | {score.groups} | {score.largest} | "
            f"{score.precision:.3f} | {score.recall:.3f} | "
            f"{_f1(score.precision, score.recall):.3f} |"
        )
        for kind in ("everyday", "telescope") if split else ():
            precision, recall = pair_precision_recall(score.grouped, items, kinds == kind)
            row += f" {precision:.3f} | {recall:.3f} |"
        rows.append(row)
    return [*rows, ""]


def _kinds_table(run: ModelRun) -> list[str]:
    split = any(kind.everyday_group_recall is not None for kind in run.kinds)
    header = (
        f"| edit | copies | median cosine | lowest cosine | pairs at >= {run.threshold:.2f} | in its original's group |"
    )
    header += " everyday photos: in its original's group |" if split else ""
    rows = ["### Original-copy pairs per edit kind, worst first", "", header, "| --- " * (header.count("|") - 1) + "|"]
    for kind in run.kinds:
        row = (
            f"| {kind.kind} | {kind.copies} | {kind.median_cosine:.3f} | {kind.lowest_cosine:.3f} | "
            f"{kind.pair_recall:.2f} | {kind.group_recall:.2f} |"
        )
        if split:
            recall = kind.everyday_group_recall
            row += f" {'-' if recall is None else f'{recall:.2f}'} |"
        rows.append(row)
    return [*rows, ""]


def _negatives_table(run: ModelRun, items: list[Item]) -> list[str]:
    """The best-scoring pairs that are not positives, within each kind of photo: where to look for duplicates
    that the sources still hold (a copy and another photo's copy pair up too)."""
    kinds = photo_kinds(items)
    rows = [
        f"### The highest-scoring negative pairs ({TOP_NEGATIVES} per kind of photo)",
        "",
        "| photos | cosine | image | image |",
        "| --- | --- | --- | --- |",
    ]
    for kind in sorted(set(kinds)):
        pairs = run.pairs.restricted(kinds == kind)
        for rank in np.flatnonzero(~pairs.hits)[:TOP_NEGATIVES]:
            first, second = items[pairs.first[rank]], items[pairs.second[rank]]
            rows.append(f"| {kind} | {pairs.scores[rank]:.4f} | {_describe(first)} | {_describe(second)} |")
    return [*rows, ""]


def _describe(item: Item) -> str:
    if item.kind is not None:
        return f"{item.source}, {item.kind} copy ({item.description})"
    return f"{item.source}, {'original' if item.family is not None else 'distractor'}"


def write_report(
    path: Path,
    collections: tuple[Collection, Collection | None],
    runs: list[list[ModelRun]],
    args: argparse.Namespace,
    load_before: float,
) -> None:
    """The markdown: how it was run, the held-out figures and the calibration over every seed, then each model on
    the first seed's scored collection."""
    scored, calibration = collections
    items = scored.items
    with_copies = len({item.family for item in items if item.family is not None})
    copies = sum(item.kind is not None for item in items)
    lines = [
        "# Near-duplicate detection: edited copies among distractors (ISC21-style)",
        "",
        f"Command: `{shlex.join(['python', *sys.argv])}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"cpu fp32, preprocessing exact; 1-minute load average {load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} after (a shared machine). Written by `benchmarks/duplicates_isc.py`: its "
        "docstring says how.",
        "",
        *_split_lines(calibration, args),
        f"Data (seed {args.seeds[0]}{', scored' if calibration else ''}): {scored.sources}. {with_copies} originals "
        f"have {args.copies_per_original} edited copies each ({copies} copies, every kind of "
        f"`benchmarks/copy_edits.py` dealt in turn: {', '.join(EDITS)}); the other "
        f"{len(items) - with_copies - copies} originals are distractors. {len(items)} images in all, originals as "
        f"JPEG quality {ORIGINAL_QUALITY}, copies {COPY_QUALITY}. Each other seed samples other telescope photos, "
        "other families and other edits.",
        "",
        "Positives are the pairs of one family (original-copy and copy-copy); µAP is the micro-average precision "
        "of ISC21 over the global ranking of every pair.",
        "",
        *_summary_tables(runs, bool(calibration)),
        *_calibration_table(runs, args.seeds),
        f"The sections below detail seed {args.seeds[0]}'s {'held-out ' if calibration else ''}collection.",
        "",
    ]
    for run in runs[0]:
        lines += model_section(run, items)
    lines += READING
    path.write_text("\n".join(lines).rstrip() + "\n")


def _split_lines(calibration: Collection | None, args: argparse.Namespace) -> list[str]:
    if calibration is None:
        return ["Split: none (`--split none`): each seed's collection is calibrated and scored on itself.", ""]
    return [
        f"Split: by photo (`--split families`). Every photo is in one of three fixed parts by a hash of its name "
        f"({HELD_OUT_SHARE:.0%} held out, {CALIBRATION_SHARE:.0%} for calibration, the rest for training a "
        "descriptor's whitening); each seed calibrates on a collection of the calibration part and is scored on "
        "one of the held-out part. Every figure below is of the held-out collections, except the calibration "
        f"columns. Seed {args.seeds[0]}'s calibration collection: {calibration.sources}.",
        "",
    ]


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}"


def _summary_tables(runs: list[list[ModelRun]], held_out: bool) -> list[str]:
    """Per model, the mean over the seeds of what the issue's targets name, and the recall per edit kind."""
    scope = "held-out collections" if held_out else "collections"
    rows = [
        f"## Over the seeds ({scope}, mean of {len(runs)})",
        "",
        "| model | images/s | µAP (per seed) | everyday µAP | telescope µAP | recall at precision 0.9 | at 0.95 | "
        "default threshold | pairs there: precision | recall | groups there: precision | recall |",
        "| --- " * 12 + "|",
    ]
    for number, first in enumerate(runs[0]):
        seeds = [seed_runs[number] for seed_runs in runs]
        kinds = [photo_kinds(run.items) for run in seeds]
        at = [run.pairs.at(run.threshold) for run in seeds]
        rows.append(
            f"| {first.label} | {statistics.fmean(len(r.vectors) / r.embed_seconds for r in seeds):.1f} | "
            f"{_mean([r.pairs.micro_average_precision() for r in seeds])} "
            f"({', '.join(f'{r.pairs.micro_average_precision():.3f}' for r in seeds)}) | "
            + " | ".join(
                _mean(
                    [r.pairs.restricted(k == kind).micro_average_precision() for r, k in zip(seeds, kinds, strict=True)]
                )
                for kind in ("everyday", "telescope")
            )
            + f" | {_mean([_recall_at(r, 0.9) for r in seeds])} | {_mean([_recall_at(r, 0.95) for r in seeds])} | "
            f"{first.threshold:.2f} | {_mean([a[0] for a in at])} | {_mean([a[1] for a in at])} | "
            f"{_mean([r.groups.precision for r in seeds])} | {_mean([r.groups.recall for r in seeds])} |"
        )
    return [*rows, "", *_kinds_summary(runs), ""]


def _recall_at(run: ModelRun, floor: float) -> float:
    reached = run.pairs.recall_at_precision(floor)
    return reached[0] if reached else 0.0


def _kinds_summary(runs: list[list[ModelRun]]) -> list[str]:
    """Copies in their original's group at each model's default threshold, per edit kind, mean over the seeds."""
    labels = [run.label for run in runs[0]]
    rows = [
        "Copies in their original's group at the default threshold, per edit kind (mean over the seeds; "
        "original-copy pairs at cosine >= the threshold in brackets):",
        "",
        "| edit | " + " | ".join(labels) + " |",
        "| --- " * (len(labels) + 1) + "|",
    ]
    for kind in EDITS:
        cells = []
        for number in range(len(labels)):
            scores = [next(k for k in seed_runs[number].kinds if k.kind == kind) for seed_runs in runs]
            cells.append(f"{_mean([k.group_recall for k in scores])} ({_mean([k.pair_recall for k in scores])})")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return rows


def _calibration_table(runs: list[list[ModelRun]], seeds: list[int]) -> list[str]:
    """Per model and seed: µAP of both collections, the calibrated threshold and its groups on both."""
    rows = [
        "## Calibration",
        "",
        "| model | seed | calibration µAP | calibrated threshold | its groups there: precision | recall | scored µAP "
        "| scored groups at it: precision | recall | scored pairs' best F1 at |",
        "| --- " * 10 + "|",
    ]
    medians = []
    for number, first in enumerate(runs[0]):
        for seed, seed_runs in zip(seeds, runs, strict=True):
            run = seed_runs[number]
            calibration, scored = run.calibration_groups, run.group_curve[run.calibrated]
            rows.append(
                f"| {run.label} | {seed} | {run.calibration_map:.3f} | {run.calibrated:.2f} | "
                f"{calibration.precision:.3f} | {calibration.recall:.3f} | {run.pairs.micro_average_precision():.3f} | "
                f"{scored.precision:.3f} | {scored.recall:.3f} | {run.pairs.best_f1()[0]:.4f} |"
            )
        median = statistics.median_low(seed_runs[number].calibrated for seed_runs in runs)
        medians.append(
            f"- {first.label}: median calibrated threshold **{median:.2f}**; the backbone's default now: "
            f"{'none' if first.default is None else f'{first.default:.2f}'}"
        )
    return [*rows, "", f"Calibration rule: {CALIBRATION_RULE}.", "", *medians, ""]


READING = [
    "## How to read it",
    "",
    "- A pooled ImageNet classifier (efficientnet-lite0) measures *what* a photo shows more than *which* photo "
    "it is: two different photos of one kind of thing (two flowers, two globular clusters) score as high as a "
    "heavy crop or a text overlay of one photo. No threshold separates both, so the default is set where groups "
    "stay right and copies are missed instead: crops, text overlays and combined edits are missed most.",
    "- A group is a connected component: one pair above the threshold between two families, or a chain of "
    "look-alike distractors, joins them, and every pair inside the group counts. That is why the groups' "
    "precision falls much faster than the pairs' on the telescope photos, and why the default is calibrated "
    "on the groups.",
    "- Everyday photos and telescope photos behave differently (the tables by kind of photo): on everyday "
    "photos, distinct photos stay well below the default; on collections of look-alike photos (astronomy, "
    "bursts, product shots on one background) raise `--threshold` (the tables say what each value costs).",
    "- The tiny random CLIP has random weights: its figures only show that the benchmark tells a model that "
    "knows nothing from one that does; it calibrates nothing.",
    "- Images/s are those of a shared 2-core machine (see the load average) and vary by a factor of 3 or more "
    "between runs.",
]
"""The report's closing notes (fixed text: the figures they point to are in the tables above them)."""


def _print_summary(run: ModelRun) -> None:
    precision, recall, _, _ = run.pairs.at(run.threshold)
    best_threshold, best_f1 = run.pairs.best_f1()
    print(
        f"{run.label}: µAP {run.pairs.micro_average_precision():.3f} (calibration {run.calibration_map:.3f}); "
        f"best F1 {best_f1:.3f} at {best_threshold:.4f}; at {run.threshold:.2f}: pairs P {precision:.3f} "
        f"R {recall:.3f}, groups P {run.groups.precision:.3f} R {run.groups.recall:.3f} ({run.groups.groups} groups); "
        f"{len(run.vectors) / run.embed_seconds:.1f} images/s"
    )
    print("  recall in groups per edit: " + ", ".join(f"{k.kind} {k.group_recall:.2f}" for k in run.kinds))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        nargs="+",
        default=["efficientnet-lite0", TINY_RANDOM_CLIP],
        help=f"models to measure (name or folder); {TINY_RANDOM_CLIP} builds the tests' tiny random CLIP",
    )
    parser.add_argument(
        "--split",
        choices=tuple(SPLIT_SIZES),
        default="families",
        help="families: calibrate on the calibration part of the photos, score the held-out part (`photo_part`); "
        "none: calibrate and score one collection (the earlier protocol)",
    )
    parser.add_argument(
        "--originals",
        type=int,
        default=None,
        help="originals per collection, with copies or not (default: 100 "
        "per part with --split families, 200 with none)",
    )
    parser.add_argument(
        "--with-copies", type=int, default=None, help="originals that get edited copies (default: 40, or 80)"
    )
    parser.add_argument("--copies-per-original", type=int, default=4)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine of the groups reported in detail (default: the median calibrated threshold over the seeds)",
    )
    parser.add_argument("--photos", default=None, help="a folder of your own distinct photos instead of the packaged")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="one collection per seed and part (sample, families, edits); the report details the first",
    )
    parser.add_argument("--out", default=None, help="markdown report (e.g. benchmarks/DUPLICATES.md)")
    return parser


def run_seed(
    args: argparse.Namespace, seed: int, models: list[tuple[str, str]], seen: dict[str, list[tuple[str, Fingerprint]]]
) -> tuple[list[ModelRun], tuple[Collection, Collection | None]]:
    """One seed: its collections (the held-out one scored, the calibration one calibrating), every model run on
    them. ``seen``: per part, the fingerprints its originals must not match (`earlier_parts_fingerprints`)."""
    with tempfile.TemporaryDirectory(prefix="duplicates-isc-") as scratch:
        calibration = None
        if args.split == "families":
            (Path(scratch) / "calibration").mkdir()
            (Path(scratch) / "held-out").mkdir()
            calibration = load_collection(args, seed, Path(scratch) / "calibration", "calibration", seen["calibration"])
            scored = load_collection(args, seed, Path(scratch) / "held-out", "held-out", seen["held-out"])
            print(f"seed {seed}, calibration: {calibration.sources}")
        else:
            scored = load_collection(args, seed, Path(scratch))
        print(f"seed {seed}{', scored' if calibration else ''}: {scored.sources}")
        runs = [
            run_model(model, label, scored.items, calibration.items if calibration else None, args.threshold)
            for model, label in models
        ]
    return runs, (scored, calibration)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    originals, with_copies = SPLIT_SIZES[args.split]
    args.originals = args.originals or originals
    args.with_copies = args.with_copies or with_copies
    load_before = os.getloadavg()[0]
    seen = (
        {part: earlier_parts_fingerprints(args, part) for part in ("calibration", "held-out")}
        if args.split == "families"
        else {}
    )
    with tempfile.TemporaryDirectory(prefix="duplicates-isc-model-") as models_folder:
        models = [
            (tiny_random_clip(Path(models_folder)), TINY_RANDOM_CLIP_LABEL)
            if model == TINY_RANDOM_CLIP
            else (model, model)
            for model in args.model
        ]
        runs, first_collections = [], None
        for seed in args.seeds:
            runs_of_seed, collections = run_seed(args, seed, models, seen)
            runs.append(runs_of_seed)
            first_collections = first_collections or collections
            for run in runs_of_seed:
                _print_summary(run)
    for number in range(len(models)):
        threshold, origin = detail_threshold([seed_runs[number] for seed_runs in runs], args.threshold)
        for of_seed in runs:
            of_seed[number] = with_detail(of_seed[number], of_seed[number].items, threshold, origin)
    if args.out:
        write_report(Path(args.out), first_collections, runs, args, load_before)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
