"""The HTML result pages of `search --html` and `duplicates --html`.

A page is one self-contained file: thumbnails are small embedded JPEGs, nothing refers outside it, every
path and text is escaped, and a key that is not a readable image gets a placeholder saying why. The last
tests open the pages in headless Chromium (Debian's ``chromium``, driven by Playwright as
``docs/screenshot.py`` does) and check that every thumbnail renders, in the expected order. Without
Chromium they skip, unless ``REQUIRE_BROWSER=1`` (CI) makes them fail.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
from collections import defaultdict
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers import encode_image, exif_rotated_png, png_declaring_size
from PIL import Image

from clip_image_encoder.search.duplicates import DuplicateGroup, GroupMember, ImageFacts, image_facts
from clip_image_encoder.search.pages import THUMBNAIL_SIDE, duplicates_page, search_page, write_page

ODD_NAME = 'cat <&> "quoted".png'
"""A file name that breaks any page that does not escape it."""
MODEL = "openai/clip-vit-base-patch32"
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


@pytest.fixture(scope="module")
def pictures(photos: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Name -> absolute path: the real photos (chelsea as a PNG with an awkward name), a 12-megapixel JPEG, an
    EXIF-rotated PNG, a half-transparent PNG, and files that are no images (broken, text, bomb, missing)."""
    folder = tmp_path_factory.mktemp("pages")
    files = {name: folder / f"{name}.jpg" for name in PHOTO_NAMES} | {"chelsea": folder / ODD_NAME}
    for name, path in files.items():
        path.write_bytes(encode_image(Image.fromarray(photos[name]), "PNG" if path.suffix == ".png" else "JPEG"))
    files["big"] = folder / "big.jpg"
    files["big"].write_bytes(encode_image(Image.fromarray(photos["china"]).resize((4000, 3000)), "JPEG", quality=90))
    files["rotated"] = folder / "rotated.png"
    files["rotated"].write_bytes(exif_rotated_png(Image.fromarray(photos["rocket"])))
    half_clear = np.dstack([np.zeros_like(photos["flower"]), np.full(photos["flower"].shape[:2], 255, np.uint8)])
    half_clear[:, : half_clear.shape[1] // 2, 3] = 0  # the left half: black, fully transparent
    files["transparent"] = folder / "transparent.png"
    files["transparent"].write_bytes(encode_image(Image.fromarray(half_clear, "RGBA"), "PNG"))
    broken = encode_image(Image.fromarray(photos["coffee"]), "JPEG")
    files["broken"] = folder / "broken.jpg"
    files["broken"].write_bytes(broken[: len(broken) // 2])
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not an image")
    files["bomb"] = folder / "bomb.png"
    files["bomb"].write_bytes(png_declaring_size(100_000, 100_000))
    files["missing"] = folder / "deleted.jpg"
    return {name: str(path) for name, path in files.items()}


class Page(HTMLParser):
    """A parsed page: its <img> and placeholder attributes, every element's attributes, and the text of each
    element by class (and by ``<tag>``), in document order. Parsing fails on a tag closed out of order."""

    VOID = frozenset({"img", "meta", "br", "hr", "link", "input"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.placeholders: list[dict[str, str]] = []
        self.attributes: list[dict[str, str]] = []
        self.texts: dict[str, list[str]] = defaultdict(list)
        self._open: list[tuple[str, list[str], list[str]]] = []
        self.feed(html)
        self.close()
        assert not self._open, f"unclosed elements: {[tag for tag, _, _ in self._open]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.attributes.append(attributes)
        classes = attributes.get("class", "").split()
        if tag == "img":
            self.images.append(attributes)
        if "placeholder" in classes:
            self.placeholders.append(attributes)
        if tag not in self.VOID:
            self._open.append((tag, [f"<{tag}>", *classes], []))

    def handle_endtag(self, tag: str) -> None:
        opened, names, parts = self._open.pop()
        assert opened == tag, f"<{opened}> closed by </{tag}>"
        text = "".join(parts)
        for name in names:
            self.texts[name].append(text)
        if self._open:
            self._open[-1][2].append(text)

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)


def decoded_thumbnails(page: Page) -> list[Image.Image]:
    """Every <img> of the page as the JPEG it embeds, checked against its width/height attributes."""
    thumbnails = []
    for image in page.images:
        prefix = "data:image/jpeg;base64,"
        assert image["src"].startswith(prefix)
        thumbnail = Image.open(BytesIO(base64.b64decode(image["src"][len(prefix) :], validate=True)))
        thumbnail.load()
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == (int(image["width"]), int(image["height"]))
        assert image["alt"]
        thumbnails.append(thumbnail)
    return thumbnails


def photo_search(pictures: dict[str, str], **query) -> str:
    matches = [(pictures[name], 0.9 - 0.05 * rank) for rank, name in enumerate(PHOTO_NAMES)]
    return search_page(matches, **query, model=MODEL, db="index")


def photo_groups(pictures: dict[str, str]) -> list[DuplicateGroup]:
    """Two groups as `group_duplicates` would give them; the second holds a key that is no file."""
    china = [pictures["big"], pictures["china"], pictures["chelsea"]]
    return [
        DuplicateGroup([GroupMember(key, 1.0 - 0.04 * i, image_facts(key)) for i, key in enumerate(china)]),
        DuplicateGroup(
            [
                GroupMember(pictures["coffee"], 1.0, image_facts(pictures["coffee"])),
                GroupMember("doc-17", 0.93, ImageFacts()),
            ]
        ),
    ]


def test_every_thumbnail_is_an_embedded_jpeg_of_at_most_200_pixels(pictures):
    page = Page(photo_search(pictures, query_image=Path(pictures["big"])))

    thumbnails = decoded_thumbnails(page)

    assert len(thumbnails) == len(PHOTO_NAMES) + 1
    assert all(max(thumbnail.size) <= THUMBNAIL_SIDE and thumbnail.mode == "RGB" for thumbnail in thumbnails)
    assert thumbnails[0].size == (200, 150)  # the 4000x3000 query


def test_a_page_refers_to_nothing_outside_itself(pictures):
    html = photo_search(pictures, query_text="a cat")

    assert not re.search(r"https?:|<script|<link|url\(|@import", html, re.IGNORECASE)
    for attributes in Page(html).attributes:
        assert all(attributes[name].startswith("data:") for name in ("src", "href", "srcset") if name in attributes)


def test_paths_are_escaped(pictures):
    html = photo_search(pictures, query_text="a cat")
    page = Page(html)

    assert ODD_NAME not in html
    assert escape_text(ODD_NAME) in html
    assert pictures["chelsea"] in page.texts["path"]
    assert ODD_NAME in [image["alt"] for image in page.images]


def escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def test_the_text_query_is_shown_escaped_on_top(pictures):
    query = '<b>red</b> & "blue" <script>cars</script>'
    html = photo_search(pictures, query_text=query)
    page = Page(html)

    assert "<b>" not in html and "<script>" not in html
    assert page.texts["query-text"] == [query]
    assert html.index("query-text") < html.index('class="card match"')
    assert page.texts["<title>"] == [f"Search: {query}"]


def test_the_image_query_is_shown_on_top(pictures):
    html = photo_search(pictures, query_image=Path(pictures["flower"]))
    page = Page(html)

    assert page.texts["path"][0] == pictures["flower"]  # the query's card, before the six matches
    assert page.texts["path"][1:] == [pictures[name] for name in PHOTO_NAMES]
    assert page.texts["rank"] == [f"#{rank}" for rank in range(1, 7)]
    assert page.texts["score"] == ["0.9000", "0.8500", "0.8000", "0.7500", "0.7000", "0.6500"]


def test_a_search_page_needs_a_query(pictures):
    with pytest.raises(ValueError, match="query_image or query_text"):
        search_page([(pictures["coffee"], 0.5)], model=MODEL, db="index")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing", "no such file"),
        ("broken", "not a readable image"),
        ("text", "not a readable image"),
        ("bomb", "too large to preview"),
        ("id", "no such file"),
        ("url", "not a local file"),
    ],
)
def test_a_key_that_is_no_image_gets_a_placeholder_that_says_why(pictures, name, reason):
    key = {"id": "doc-17", "url": "https://example.org/cat.jpg"}.get(name) or pictures[name]

    page = Page(search_page([(key, 0.5)], query_text="a cat", model=MODEL, db="index"))

    assert page.images == []
    assert [placeholder["aria-label"] for placeholder in page.placeholders] == [f"no preview: {reason}"]
    assert page.texts["path"] == [key]


def test_thumbnails_follow_the_exif_orientation(pictures):
    page = Page(search_page([(pictures["rotated"], 0.5)], query_text="a rocket", model=MODEL, db="index"))

    assert decoded_thumbnails(page)[0].size == (200, 133)  # shown as the 640x427 rocket, not its stored 427x640


def test_transparent_pixels_show_white(pictures):
    page = Page(search_page([(pictures["transparent"], 0.5)], query_text="a flower", model=MODEL, db="index"))

    thumbnail = np.asarray(decoded_thumbnails(page)[0])
    assert thumbnail[:, : thumbnail.shape[1] // 3].min() > 240  # the clear half: white, not its black pixels


def test_the_duplicates_page_sums_up_the_run(pictures):
    page = Page(duplicates_page(photo_groups(pictures), threshold=0.9, model=MODEL, source="index"))

    (summary,) = page.texts["summary"]
    assert "2 groups" in summary and "5 images" in summary and "0.9" in summary and MODEL in summary


def test_the_duplicates_page_shows_each_group_in_order_the_original_first(pictures):
    groups = photo_groups(pictures)

    page = Page(duplicates_page(groups, threshold=0.9, model=MODEL, source="index"))

    assert page.texts["path"] == [member.key for group in groups for member in group.members]
    assert [text.startswith("most original") for text in page.texts["member"]] == [True, False, False, True, False]
    assert page.texts["score"] == ["1.0000", "0.9600", "0.9200", "1.0000", "0.9300"]
    assert len(decoded_thumbnails(page)) == 4 and len(page.placeholders) == 1  # doc-17 is no file


def test_each_duplicate_shows_its_pixel_size_and_file_size(pictures):
    page = Page(duplicates_page(photo_groups(pictures), threshold=0.9, model=MODEL, source="index"))

    kib = os.path.getsize(pictures["big"]) / 1024
    assert page.texts["facts"][0] == f"4000\N{MULTIPLICATION SIGN}3000 \N{MIDDLE DOT} {kib / 1024:.1f} MiB"
    assert page.texts["facts"][-1] == "size unknown"


def test_write_page_writes_utf8(tmp_path):
    write_page(tmp_path / "page.html", "<p>café \N{GREATER-THAN OR EQUAL TO} 0.9</p>")

    assert (tmp_path / "page.html").read_bytes() == "<p>café ≥ 0.9</p>".encode()


def test_write_page_names_a_path_it_cannot_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        write_page(tmp_path / "no-such-folder" / "page.html", "<p></p>")


# In headless Chromium: one browser for the module.


def load_screenshot_tool() -> ModuleType:
    """docs/screenshot.py, which holds the one way this project starts Chromium."""
    spec = importlib.util.spec_from_file_location(
        "screenshot", Path(__file__).resolve().parents[2] / "docs" / "screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_browser(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """(docs/screenshot.py as a module, a headless Chromium context 1200 CSS pixels wide)."""
    try:
        tool = load_screenshot_tool()
    except ImportError as exc:
        no_browser(f"no Playwright ({exc}): pip install -r requirements-test.txt")
    if tool.chromium_path() is None:
        no_browser("no Chromium: apt-get install chromium (Debian's), or set CHROMIUM to a Chromium binary")
    with tool.chromium(width=1200) as context:
        yield tool, context


RENDERED = """() => ({
    images: [...document.images].map(image => [image.complete, image.naturalWidth, image.naturalHeight]),
    placeholders: document.querySelectorAll(".placeholder").length,
    query: [...document.querySelectorAll("header .path, .query-text")].map(element => element.textContent),
    paths: [...document.querySelectorAll("main .path")].map(element => element.textContent),
    groups: [...document.querySelectorAll("section.group")].map(
        group => [...group.querySelectorAll(".path")].map(element => element.textContent)),
    rows: [...document.querySelectorAll("section.group")].map(
        group => [...group.querySelectorAll(".card")].map(card => Math.round(card.getBoundingClientRect().top))),
})"""


def render(browser, html: str, folder: Path) -> tuple[dict, Image.Image]:
    """What Chromium shows of a page opened as a file: its images' state, its texts in order, a screenshot."""
    tool, context = browser
    (folder / "page.html").write_text(html, encoding="utf-8")
    tab = context.new_page()
    requests = []
    tab.on("request", lambda request: requests.append(request.url))
    try:
        tab.goto((folder / "page.html").as_uri(), wait_until="load")
        shown = tab.evaluate(RENDERED)
    finally:
        tab.close()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    tool.screenshot(context, folder / "page.html", folder / "page.png")
    return shown, Image.open(folder / "page.png")


def assert_renders_every_thumbnail(shown: dict, expected: int, screenshot: Image.Image) -> None:
    assert len(shown["images"]) == expected
    assert all(complete and width > 0 and height > 0 for complete, width, height in shown["images"])
    assert screenshot.format == "PNG" and screenshot.width == 1200
    pixels = np.asarray(screenshot.convert("RGB"), dtype=np.int32)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert len(colours) > 5000  # photos, not a blank or single-colour page


def test_chromium_renders_a_search_by_image(browser, pictures, tmp_path):
    html = photo_search(pictures, query_image=Path(pictures["big"]))

    shown, screenshot = render(browser, html, tmp_path)

    assert_renders_every_thumbnail(shown, len(PHOTO_NAMES) + 1, screenshot)
    assert shown["query"] == [pictures["big"]]
    assert shown["paths"] == [pictures[name] for name in PHOTO_NAMES]


def test_chromium_renders_a_search_by_text(browser, pictures, tmp_path):
    matches = [(pictures[name], 0.3) for name in PHOTO_NAMES] + [(pictures["missing"], 0.1)]
    html = search_page(matches, query_text="a cat <on> a mat", model=MODEL, db="index")

    shown, screenshot = render(browser, html, tmp_path)

    assert_renders_every_thumbnail(shown, len(PHOTO_NAMES), screenshot)
    assert shown["placeholders"] == 1
    assert shown["query"] == ["a cat <on> a mat"]
    assert shown["paths"] == [key for key, _ in matches]


def test_chromium_renders_the_duplicate_groups_side_by_side(browser, pictures, tmp_path):
    groups = photo_groups(pictures)

    shown, screenshot = render(browser, duplicates_page(groups, threshold=0.9, model=MODEL, source="index"), tmp_path)

    assert_renders_every_thumbnail(shown, 4, screenshot)
    assert shown["groups"] == [[member.key for member in group.members] for group in groups]
    assert all(len(set(tops)) == 1 for tops in shown["rows"])  # each group's members on one row
