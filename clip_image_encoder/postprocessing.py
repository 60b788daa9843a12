"""What is done to embeddings after the model: truncation, l2 normalisation, int8 quantisation, dtype.

Order matters and is fixed: truncate to ``embed_dim`` first (so a truncated vector is
normalised as a whole), then normalise, then quantise or cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clip_image_encoder.options import EncoderOptions
from clip_image_encoder.similarity import l2_normalize

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
