"""What is done to embeddings after the model (truncation, l2 normalisation, int8 quantisation, dtype), and
the cosine that compares two of them.

Order matters and is fixed: truncate to ``embed_dim`` first (so a truncated vector is
normalised as a whole), then normalise, then quantise or cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clip_image_encoder.config.options import EncoderOptions

QUANTIZATION_SCALE = 127
"""int8 embeddings are ``round(127 * v / |v|)``: ``dot(qa, qb) / 127**2`` approximates ``cos(a, b)``."""


@dataclass(frozen=True)
class OutputOptions:
    """Per-request choices of the embedding's form; the defaults return the model's raw float32 output."""

    normalize: bool = False
    quantize: bool = False
    """Scalar int8 of the l2-normalised vector (as TFLite's ImageEmbedder); implies ``normalize``."""
    embed_dim: int | None = None
    """Keep only the first D dimensions (Matryoshka-style truncation); None keeps all."""
    dtype: str = "float32"
    """float32 or float16, for non-quantised output."""

    @classmethod
    def from_options(cls, options: EncoderOptions) -> OutputOptions:
        """The output part of validated encoder options."""
        return cls(options.normalize, options.quantize, options.embed_dim or None, options.output_dtype)


def apply_output_options(embeddings: np.ndarray, options: OutputOptions) -> np.ndarray:
    """``(N, D)`` float32 model output -> ``(N, embed_dim or D)`` in the asked form."""
    if options.embed_dim is not None:
        embeddings = embeddings[..., : options.embed_dim]
    if options.quantize:
        unit = l2_normalize(embeddings)
        return np.clip(np.rint(unit * QUANTIZATION_SCALE), -QUANTIZATION_SCALE, QUANTIZATION_SCALE).astype(np.int8)
    if options.normalize:
        embeddings = l2_normalize(embeddings)
    return embeddings.astype(options.dtype)


def apply_to_results(results: list[np.ndarray | Exception], options: OutputOptions) -> list[np.ndarray | Exception]:
    """`apply_output_options` on the embeddings among per-input results (raw ``(D,)`` float32 or an error),
    errors kept in their places: how one request's options apply to its part of a joined batch."""
    embedded = [index for index, result in enumerate(results) if isinstance(result, np.ndarray)]
    if not embedded:
        return list(results)
    shaped = apply_output_options(np.stack([results[index] for index in embedded]), options)
    finished = list(results)
    for index, row in zip(embedded, shaped, strict=True):
        finished[index] = row
    return finished


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Scale each row of ``(N, D)`` (or one ``(D,)`` vector) to unit length; zero rows stay zero."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.where(norms == 0, 1, norms)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two embeddings, in [-1, 1].

    Raises ValueError for vectors of different sizes or a zero vector, where the cosine is
    undefined, rather than returning a silent NaN.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare embeddings of sizes {a.size} and {b.size}")
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        raise ValueError("cosine similarity is undefined for a zero vector")
    return float(np.dot(a, b) / (norm_a * norm_b))
