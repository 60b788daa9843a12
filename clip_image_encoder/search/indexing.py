"""Fill and query an index from the command line's side: folders of images in, embeddings of one model.

The index records the checkpoint of its embeddings (`model_identity`); every query and addition must come
from the same one, and a folder's images are keyed by their absolute paths.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import EncodeResult, ImageEncoder, encode_paths
from clip_image_encoder.errors import ModelNotFoundError, OptionError
from clip_image_encoder.models.backbones import backbone_of
from clip_image_encoder.search.stores import IndexSpec, VectorStore, is_server_uri, open_store


def open_index(db: str | Path, model_name: str | None = None, index: str | IndexSpec | None = None) -> VectorStore:
    """The store ``--db`` names (a folder, or a Milvus server's uri), claimed for ``model_name`` when given."""
    return open_store(db, model_name, index)


def require_index(db: str | Path) -> None:
    """Refuse a ``--db`` folder that holds no index, saying how to build one (a server says so when opened)."""
    if not is_server_uri(str(db)) and not Path(db).is_dir():
        raise OptionError(f"{db} holds no index: build one with 'clip-image-encoder index DATA --db {db}'")


def empty_index_message(db: str | Path) -> str:
    return f"the index in {db} is empty: add images with 'clip-image-encoder index DATA --db {db}'"


def embed_image_query(path: Path, options: EncoderOptions) -> EncodeResult:
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        (query,) = list(encode_paths(encoder, [path], options))
    return query


def embed_text_query(text: str, options: EncoderOptions) -> EncodeResult:
    """The text tower of the index's checkpoint (the same ``--model``): its embedding is comparable to images'."""
    from clip_image_encoder.encoding.texts import TextEncoder

    (query,) = TextEncoder.from_pretrained(options.pretrained_model_name_or_path, options.device).encode([text])
    return query


def default_threshold(model_name: str | None) -> float:
    """The backbone's calibrated duplicate threshold (`Backbone.duplicate_threshold`); an `OptionError` where
    it has none."""
    backbone = None
    if model_name is not None:
        with contextlib.suppress(ModelNotFoundError):
            backbone = backbone_of(model_name)
    if backbone is None or backbone.duplicate_threshold is None:
        family = f"backbone {backbone.name!r}" if backbone else f"model {model_name!r}"
        raise OptionError(
            f"{family} has no calibrated duplicate threshold (no weights of it could be had to calibrate one): "
            "pass --threshold, or calibrate one on your images with benchmarks/duplicates_isc.py --model MODEL"
        )
    return backbone.duplicate_threshold
