"""Fill and query an index from the command line's side: folders of images in, embeddings of one model.

The index records the checkpoint of its embeddings (`model_identity`); every query and addition must come
from the same one, and a folder's images are keyed by their absolute paths.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clip_image_encoder.config.options import EncoderOptions
from clip_image_encoder.encoding.images import EncodeResult, ImageEncoder, encode_paths
from clip_image_encoder.errors import EmbeddingError, ModelNotFoundError, OptionError
from clip_image_encoder.images.listing import list_images
from clip_image_encoder.models.backbones import backbone_of
from clip_image_encoder.search.vector_index import VectorIndex

UPSERT_BATCHES = 8
"""Embeddings are written to the index every this many batches, so memory does not grow with the folder."""


def open_index(db: str | Path, model_name: str | None = None) -> VectorIndex:
    """The index folder, claimed for ``model_name`` when given."""
    return VectorIndex(Path(db), model_name=model_name)


def require_index(db: str | Path) -> None:
    """Refuse a ``--db`` that holds no index, saying how to build one."""
    if not Path(db).is_dir():
        raise OptionError(f"{db} holds no index: build one with 'clip-image-encoder index DATA --db {db}'")


def empty_index_message(db: str | Path) -> str:
    return f"the index in {db} is empty: add images with 'clip-image-encoder index DATA --db {db}'"


def index_images(data: Path, index: VectorIndex, options: EncoderOptions, quiet: bool = False) -> tuple[int, int]:
    """Embed every image under ``data`` into ``index`` (keys: absolute paths), in chunks: (indexed, failed)."""
    paths = list_images(data)
    keys, vectors, failures = [], [], 0
    with ImageEncoder.from_options(options, any_local_file=True) as encoder:
        results = encode_paths(encoder, paths, options)
        progress = tqdm(zip(paths, results, strict=True), total=len(paths), unit="img", desc="indexing", disable=quiet)
        for path, result in progress:
            if isinstance(result, EmbeddingError):
                failures += 1
                progress.write(f"skipped {path}: {result}", file=sys.stderr)
                continue
            keys.append(str(path))
            vectors.append(result)
            if len(keys) == options.batch_size * UPSERT_BATCHES:
                index.upsert(keys, np.stack(vectors))
                keys, vectors = [], []
        index.upsert(keys, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
    return len(paths) - failures, failures


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
