"""Self-contained HTML pages of search results and near-duplicate groups, for a person to look at or to mail.

A page is one file: every thumbnail is a small JPEG embedded as a ``data:`` uri and the style sheet is
inline, so it renders with no network and no other file, and nothing in it runs (no JavaScript). Every
path and text is HTML-escaped. A key that is not a readable image (an id, a url, a deleted or broken
file, a decompression bomb) gets a placeholder box saying why, never a broken ``<img>``.

Thumbnails are decoded by `decode_bytes`, the encoder's own decoder: the same pixel limit, EXIF
orientation, transparency on white, and a reduced-size JPEG decode (Pillow ``draft``), so a
12-megapixel photo costs a fraction of a full decode.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from io import BytesIO
from pathlib import Path

from PIL import Image

from clip_image_encoder.errors import ImageTooLargeError
from clip_image_encoder.images.decoding import decode_bytes
from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.search.duplicates import DuplicateGroup, GroupMember, ImageFacts

THUMBNAIL_SIDE = 200
"""Longest side of a thumbnail, in pixels; shown at one image pixel per CSS pixel."""
THUMBNAIL_QUALITY = 80
"""JPEG quality: a photo thumbnail is about 4-11 KB (5-15 KB as base64), so a page of a hundred mails."""


@dataclass(frozen=True)
class Thumbnail:
    """An embeddable JPEG thumbnail of one image."""

    data_uri: str
    width: int
    height: int


@dataclass(frozen=True)
class NoPreview:
    """Why a key has no thumbnail: ``reason`` is shown in the box, ``detail`` in its tooltip."""

    reason: str
    detail: str = ""


def thumbnail(key: str, side: int = THUMBNAIL_SIDE) -> Thumbnail | NoPreview:
    """A JPEG thumbnail of the local image file ``key`` names, at most ``side`` pixels on its long side."""
    if "://" in key:  # a url key from a Flow's index: a page never makes a request
        return NoPreview("not a local file", key)
    try:
        data = Path(key).read_bytes()
    except FileNotFoundError:
        return NoPreview("no such file", key)
    except IsADirectoryError:
        return NoPreview("a folder, not an image", key)
    except PermissionError:
        return NoPreview("not readable (permission denied)", key)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, an I/O error
        return NoPreview("cannot be read", str(exc))
    try:
        image = decode_bytes(data, DecodeLimits().max_image_pixels, draft_size=side)
    except ImageTooLargeError as exc:
        return NoPreview("too large to preview", str(exc))
    except Exception as exc:  # Pillow raises many types for broken files; each is one box, not a failed page
        return NoPreview("not a readable image", str(exc))
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def thumbnails(keys: Iterable[str]) -> dict[str, Thumbnail | NoPreview]:
    """Thumbnails of many keys, each decoded once, in threads (Pillow decodes without holding the GIL)."""
    unique = list(dict.fromkeys(keys))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(thumbnail, unique), strict=True))


def search_page(
    matches: Sequence[tuple[str, float]],
    *,
    query_image: Path | None = None,
    query_text: str | None = None,
    model: str,
    db: str,
) -> str:
    """The page of one search: the query on top (its thumbnail, its text, or both), then the matches
    best first as a grid of cards: rank, thumbnail, cosine score and path."""
    if query_image is None and query_text is None:
        raise ValueError("a search page needs the query: give query_image or query_text")
    image_key = str(query_image) if query_image is not None else None
    previews = thumbnails([key for key, _ in matches] + ([image_key] if image_key is not None else []))
    cards = [
        f'<li class="card match"><span class="rank">#{rank}</span>{_frame(previews[key], key)}'
        f'<p class="score" title="cosine similarity to the query">{score:.4f}</p>{_path(key)}</li>'
        for rank, (key, score) in enumerate(matches, start=1)
    ]
    query = ""
    if image_key is not None:
        query += '<div class="card query-image"><span class="badge">query</span>'
        query += f"{_frame(previews[image_key], image_key)}{_path(image_key)}</div>"
    if query_text is not None:
        query += f'<p class="query-text">{escape(query_text)}</p>'
    summary = f"{_plural(len(matches), 'match', 'matches')} &middot; model {escape(model)} &middot; index {escape(db)}"
    header = f'<header><h1>Search results</h1><div class="query">{query}</div><p class="summary">{summary}</p></header>'
    body = f'<ol class="grid">{"".join(cards)}</ol>' if cards else '<p class="empty">No matches.</p>'
    title = f"Search: {query_text if query_text is not None else Path(str(image_key)).name}"
    return _document(title, f"{header}<main>{body}</main>")


def duplicates_page(groups: Sequence[DuplicateGroup], *, threshold: float, model: str, source: str) -> str:
    """The page of a duplicates run: a summary line, then one row per group with its members side by side,
    the most original first; each member shows its thumbnail, similarity to the first, path, size."""
    previews = thumbnails(member.key for group in groups for member in group.members)
    images = sum(len(group.members) for group in groups)
    summary = (
        f"{_plural(len(groups), 'group')} of near-duplicates, {_plural(images, 'image')} in all, "
        f"at cosine similarity &ge; {threshold:g} &middot; model {escape(model)} &middot; from {escape(source)}"
    )
    sections = [_group_section(number, group, previews) for number, group in enumerate(groups, start=1)]
    body = "".join(sections) if sections else '<p class="empty">No near-duplicates.</p>'
    header = f'<header><h1>Near-duplicates</h1><p class="summary">{summary}</p></header>'
    return _document(f"Near-duplicates: {_plural(len(groups), 'group')}", header + f"<main>{body}</main>")


def write_page(path: Path, html: str) -> None:
    """Write a page as UTF-8; an OSError names the path (and keeps its errno class, e.g. FileNotFoundError)."""
    try:
        Path(path).write_text(html, encoding="utf-8")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the HTML page: {exc.strerror}", str(path)) from exc


def _group_section(number: int, group: DuplicateGroup, previews: dict[str, Thumbnail | NoPreview]) -> str:
    members = "".join(_member_card(m, previews[m.key], first=i == 0) for i, m in enumerate(group.members))
    return (
        f'<section class="group"><h2>Group {number} <small>{_plural(len(group.members), "image")}</small></h2>'
        f'<ol class="row">{members}</ol></section>'
    )


def _member_card(member: GroupMember, preview: Thumbnail | NoPreview, *, first: bool) -> str:
    badge = '<span class="badge">most original</span>' if first else ""
    similarity = f"{member.similarity:.4f}"
    return (
        f'<li class="card member{" original" if first else ""}">{badge}{_frame(preview, member.key)}'
        f'<p class="score" title="cosine similarity to the most original">{similarity}</p>{_path(member.key)}'
        f'<p class="facts">{_facts(member.facts)}</p></li>'
    )


def _frame(preview: Thumbnail | NoPreview, key: str) -> str:
    """A fixed-size box holding the thumbnail, or a placeholder that says why there is none."""
    if isinstance(preview, Thumbnail):
        inner = (
            f'<img src="{preview.data_uri}" width="{preview.width}" height="{preview.height}" '
            f'alt="{escape(Path(key).name or key)}">'
        )
    else:
        label = escape(f"no preview: {preview.reason}")
        inner = (
            f'<div class="placeholder" role="img" aria-label="{label}" title="{escape(preview.detail)}">'
            f"<span>no preview</span><span>{escape(preview.reason)}</span></div>"
        )
    return f'<div class="frame">{inner}</div>'


def _path(key: str) -> str:
    """The key as a path, its folder dimmed so that the file name stands out."""
    folder, slash, name = key.rpartition("/")
    return f'<p class="path" title="{escape(key)}"><span class="dir">{escape(folder + slash)}</span>{escape(name)}</p>'


def _facts(facts: ImageFacts) -> str:
    size = f"{facts.width}&times;{facts.height}" if facts.width and facts.height else "size unknown"
    return f"{size} &middot; {_bytes(facts.file_size)}" if facts.file_size is not None else size


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    return f"{count / 1024:.1f} KiB" if count < 1024**2 else f"{count / 1024**2:.1f} MiB"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


_STYLE = f"""
:root {{ color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }}
body {{ margin: 1.5rem; background: #f4f4f5; color: #18181b; line-height: 1.35; }}
h1 {{ margin: 0 0 .75rem; font-size: 1.5rem; }}
h2 {{ margin: 0 0 .5rem; font-size: 1.1rem; }}
h2 small, .summary, .dir, .facts {{ color: #71717a; font-weight: normal; }}
header {{ margin-bottom: 1.25rem; }}
.query {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; }}
.query-text {{ margin: 0; padding: .5rem .75rem; font-size: 1.25rem; background: #fff;
  border-left: 4px solid #2563eb; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 1rem; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
ol {{ list-style: none; margin: 0; padding: 0; }}
.group {{ margin-bottom: 1.5rem; padding: .75rem; background: #e4e4e7; border-radius: 8px; }}
.card {{ position: relative; box-sizing: border-box; width: 15rem; padding: 2rem .6rem .6rem; background: #fff;
  border: 1px solid #d4d4d8; border-radius: 6px; }}
.grid .card {{ width: auto; }}
.original {{ border: 2px solid #16a34a; }}
.rank, .badge {{ position: absolute; top: .4rem; left: .4rem; z-index: 1; padding: .1rem .4rem; border-radius: 4px;
  font-size: .8rem; font-weight: 600; color: #fff; background: #2563eb; }}
.badge {{ background: #16a34a; }}
.frame {{ display: flex; align-items: center; justify-content: center; height: {THUMBNAIL_SIDE}px; }}
.frame img {{ display: block; max-width: 100%; height: auto; }}
.placeholder {{ display: flex; flex-direction: column; align-items: center; justify-content: center; gap: .25rem;
  box-sizing: border-box; width: {THUMBNAIL_SIDE}px; height: {THUMBNAIL_SIDE * 3 // 4}px; padding: .5rem;
  border: 2px dashed #a1a1aa; border-radius: 4px; color: #52525b; font-size: .85rem; text-align: center; }}
.score {{ margin: .5rem 0 .2rem; font-size: 1.05rem; font-weight: 600; font-variant-numeric: tabular-nums; }}
.path {{ margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .8rem; overflow-wrap: anywhere; }}
.facts {{ margin: .2rem 0 0; font-size: .8rem; }}
"""
