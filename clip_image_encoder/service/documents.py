"""The Document schemas that travel through a Flow: what clients send and what the Executors write."""

# No `from __future__ import annotations` here: docarray and Jina read the schemas from live type hints.
from docarray import BaseDoc, DocList
from docarray.typing import AnyEmbedding, AnyTensor
from pydantic import Field


class ImageMatch(BaseDoc):
    """One search result: the indexed image and its cosine similarity to the query."""

    key: str
    """The indexed Document's ``url``, or its id when it had none."""
    score: float


class ImageDocument(BaseDoc):
    """An image in, its embedding (or the reason it has none) out; in the search Flow, a query: an image or a text.

    Field names follow docarray's ``ImageDoc``; the types are deliberately loose so that one
    malformed Document reaches the Executor and gets its own ``error`` instead of failing the
    whole request at deserialisation.
    """

    url: str | None = None
    """Local path, ``file://``, ``data:`` uri, or ``http(s)://`` when the Executor allows remote uris."""
    bytes_: bytes | None = None
    """Encoded image file (JPEG, PNG, WebP, ...)."""
    tensor: AnyTensor | None = None
    """Decoded ``(H, W, 3)``, ``(H, W)`` or ``(H, W, 4)`` uint8 pixels; or ``(3, H, W)`` float32 model input."""
    text: str | None = None
    """A text query instead of an image (search Flow ``/search``): `CLIPTextEncoder` embeds it. A Document that
    carries an image is embedded as that image, and its text is left alone."""
    roi: list[int] | None = None
    """Embed only this region: ``[x, y, width, height]`` in pixels of the (EXIF-oriented) image."""
    rotation: int | None = None
    """Rotate by 0, 90, 180 or 270 degrees counter-clockwise (after the roi); None: the request's."""
    embedding: AnyEmbedding | None = None
    """``(D,)`` written by the Executor: float32 (or float16, or int8 when quantised)."""
    model: str | None = None
    """The checkpoint that wrote ``embedding`` (`models.identity.model_identity`): an index takes and answers
    only its own."""
    error: str | None = None
    """Why this Document got no embedding; None when it did."""
    matches: DocList[ImageMatch] = Field(default_factory=lambda: DocList[ImageMatch]())
    """Filled by the search Flow's ``/search``: the nearest indexed images, best first; empty otherwise. Not
    Optional: Jina 3.34's gateway cannot rebuild the schema of an optional list of Documents (KeyError
    '#/$defs/ImageMatch') when two Executors of a Flow take this schema on one endpoint."""


class TextDocument(BaseDoc):
    """A text query in, its embedding in the image embeddings' space (or the reason it has none) out.

    ``text`` is optional so that a Document without one gets its own ``error`` instead of failing
    the whole request at deserialisation.
    """

    text: str | None = None
    embedding: AnyEmbedding | None = None
    """``(D,)`` float32 written by `CLIPTextEncoder`; D is the checkpoint's projection dimension, as for its images."""
    model: str | None = None
    """The checkpoint that wrote ``embedding`` (`models.identity.model_identity`)."""
    error: str | None = None
    """Why this Document got no embedding; None when it did."""
