"""A full-page PNG screenshot of an HTML file in headless Chromium (Debian's ``chromium``), for the README.

Usage (after ``apt-get install chromium`` and ``pip install -r requirements-test.txt``)::

    clip-image-encoder search photos/cat.jpg --db index --html results.html
    python docs/screenshot.py results.html docs/search.png [--width 1200]

Playwright drives the system's Chromium (never a browser of its own download) with the flags a machine
with no outside network needs: no background, component-update or sync requests. The tests
(`tests/search/test_pages.py`) use the same `chromium` context to check the result pages render.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM_FLAGS = (
    "--no-sandbox",  # root in CI and containers; the pages are our own
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless mode (``--headless``) is Playwright's own; the rest keep Chromium from reaching out at start."""


def chromium_path() -> str | None:
    """Debian's Chromium, or ``$CHROMIUM`` when set; None when there is none."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


@contextmanager
def chromium(width: int = 1200, height: int = 800) -> Iterator[BrowserContext]:
    """One headless Chromium with a fresh, throw-away profile and a ``width`` x ``height`` CSS-pixel viewport."""
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no chromium found: apt-get install chromium (or set CHROMIUM to its path)")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()


def screenshot(context: BrowserContext, html: Path, png: Path) -> None:
    """Open ``html`` as a file (as a reader of a mailed page would) and save the whole page as ``png``."""
    page = context.new_page()
    try:
        page.goto(Path(html).resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(png), full_page=True)
    finally:
        page.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the HTML page to open")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels (default 1200)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        parser.error(f"{args.html}: no such file")
    with chromium(args.width) as context:
        screenshot(context, args.html, args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
