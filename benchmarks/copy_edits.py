"""Edited copies of a photo, as the copies that near-duplicate detection must match (ISC21-style edits).

Each edit is a small function ``(image, rng) -> (image, description)`` on an RGB PIL image that draws its
strength from the ``random.Random`` it is given, so a seed reproduces every copy. The kinds follow the
transformations of the 2021 Image Similarity Challenge (Douze et al., "The 2021 Image Similarity Dataset
and Challenge"), at strengths a re-upload, a screenshot or a meme would show:

    crop      keep 45-85% of each side, anywhere in the frame
    resize    downscale to 20-60% of the size, aspect ratio changed by up to 25%
    jpeg      re-encode at JPEG quality 5-25
    colour    one of brightness, contrast, saturation, hue shift, greyscale
    rotate    rotate 3-12 degrees either way, then crop to the largest upright frame without corners
    text      1-3 lines of words in Pillow's default font, each 5-15% of the height
    flip      mirror left to right
    combined  2-3 of the kinds above, in a random order

Importing this module has no side effects; other benchmarks reuse it (`edited_copies`).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

Edit = Callable[[Image.Image, random.Random], tuple[Image.Image, str]]
"""An edit: the edited RGB image and a short description of what was done (for reports)."""

WORDS = ("sale", "copy", "lol", "2026", "breaking", "new", "photo", "when you", "meanwhile", "repost", "wow", "#1")
"""Words of the text overlays: memes and watermarks, not language."""


@dataclass(frozen=True)
class EditedCopy:
    kind: str
    """The edit kind, a key of `EDITS`."""
    description: str
    """The parameters drawn, e.g. ``crop 62%x71% at (0.10, 0.21)``."""
    image: Image.Image
    """RGB."""


def crop(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A crop keeping 45-85% of each side: the most common edit of a re-posted photo."""
    width, height = image.size
    keep_w, keep_h = rng.uniform(0.45, 0.85), rng.uniform(0.45, 0.85)
    left, top = rng.uniform(0, 1 - keep_w), rng.uniform(0, 1 - keep_h)
    box = (round(left * width), round(top * height), round((left + keep_w) * width), round((top + keep_h) * height))
    return image.crop(box), f"crop {keep_w:.0%}x{keep_h:.0%} at ({left:.2f}, {top:.2f})"


def resize(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A downscale to 20-60%, aspect ratio changed by up to 25%: thumbnails and stretched re-uploads."""
    scale, stretch = rng.uniform(0.2, 0.6), rng.uniform(0.8, 1.25)
    width = max(16, round(image.width * scale * math.sqrt(stretch)))
    height = max(16, round(image.height * scale / math.sqrt(stretch)))
    return image.resize((width, height), Image.Resampling.BILINEAR), f"resize to {width}x{height}"


def jpeg(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A re-encode at JPEG quality 5-25: blocking and colour bleeding of heavy compression."""
    quality = rng.randint(5, 25)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB"), f"jpeg quality {quality}"


def colour(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """One colour change: brightness, contrast or saturation by 0.4-0.7x or 1.4-1.9x, a hue shift, or greyscale."""
    change = rng.choice(("brightness", "contrast", "saturation", "hue", "greyscale"))
    if change == "greyscale":
        return ImageOps.grayscale(image).convert("RGB"), "greyscale"
    if change == "hue":
        shift = rng.randint(30, 225)  # of 256: 42-316 degrees
        hue, saturation, value = image.convert("HSV").split()
        hue = hue.point(lambda h: (h + shift) % 256)
        return Image.merge("HSV", (hue, saturation, value)).convert("RGB"), f"hue shift {shift * 360 // 256} deg"
    factor = rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.9)
    enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast}.get(
        change, ImageEnhance.Color
    )
    return enhancer(image).enhance(factor), f"{change} x{factor:.2f}"


def rotate(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A rotation by 3-12 degrees, cropped to the largest upright frame of the same aspect with no empty corners."""
    degrees = rng.uniform(3, 12) * rng.choice((-1, 1))
    width, height = image.size
    theta = math.radians(abs(degrees))
    # the scaled frame (s*w, s*h), rotated back, must stay inside the w x h rotated image
    scale = min(
        width / (width * math.cos(theta) + height * math.sin(theta)),
        height / (width * math.sin(theta) + height * math.cos(theta)),
    )
    rotated = image.rotate(degrees, resample=Image.Resampling.BICUBIC)
    keep_w, keep_h = width * scale, height * scale
    box = (
        math.ceil((width - keep_w) / 2),
        math.ceil((height - keep_h) / 2),
        math.floor((width + keep_w) / 2),
        math.floor((height + keep_h) / 2),
    )
    return rotated.crop(box), f"rotate {degrees:+.1f} deg"


def text(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """1-3 lines of words in Pillow's default font, each 5-15% of the height, outlined: captions and watermarks."""
    edited = image.copy()
    draw = ImageDraw.Draw(edited)
    lines = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
    size = max(8, round(image.height * rng.uniform(0.05, 0.15)))
    font = ImageFont.load_default(size=size)
    fill = tuple(rng.randrange(256) for _ in range(3))
    outline = (0, 0, 0) if sum(fill) > 384 else (255, 255, 255)
    top = rng.uniform(0, 0.6) * image.height
    for number, line in enumerate(lines):
        left = rng.uniform(0, 0.4) * image.width
        position = (left, top + number * size * 1.2)
        draw.text(position, line, font=font, fill=fill, stroke_width=max(1, size // 12), stroke_fill=outline)
    return edited, f"text {len(lines)} line{'s' if len(lines) > 1 else ''} at {size} px: {' / '.join(lines)}"


def flip(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A left-right mirror: the cheapest way to dodge exact matching."""
    return ImageOps.mirror(image), "flip"


SINGLE_EDITS: dict[str, Edit] = {
    "crop": crop,
    "resize": resize,
    "jpeg": jpeg,
    "colour": colour,
    "rotate": rotate,
    "text": text,
    "flip": flip,
}


def combined(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """2-3 distinct single edits in a random order, as copies pass through several hands."""
    kinds = rng.sample(sorted(SINGLE_EDITS), rng.randint(2, 3))
    descriptions = []
    for kind in kinds:
        image, description = SINGLE_EDITS[kind](image, rng)
        descriptions.append(description)
    return image, " + ".join(descriptions)


EDITS: dict[str, Edit] = {**SINGLE_EDITS, "combined": combined}
"""Every edit kind, by name; the order of the module docstring."""


def edit(image: Image.Image, kind: str, rng: random.Random) -> EditedCopy:
    """One edited copy of ``image`` (any mode; the copy is RGB)."""
    edited, description = EDITS[kind](image.convert("RGB"), rng)
    return EditedCopy(kind, description, edited)


def edited_copies(
    image: Image.Image, rng: random.Random, n: int, kinds: Sequence[str] | None = None
) -> list[EditedCopy]:
    """``n`` edited copies of ``image``: of ``kinds`` in turn (repeated when fewer than ``n``), or of ``n``
    distinct kinds drawn from `EDITS`."""
    if kinds is None:
        if n > len(EDITS):
            raise ValueError(f"{n} copies of distinct kinds asked, there are {len(EDITS)} kinds")
        kinds = rng.sample(list(EDITS), n)
    unknown = sorted(set(kinds) - set(EDITS))
    if unknown:
        raise ValueError(f"unknown edit kinds {unknown}; known: {', '.join(EDITS)}")
    return [edit(image, kinds[i % len(kinds)], rng) for i in range(n)]
