"""Vector arithmetic on embeddings: l2 normalisation and cosine similarity."""

from __future__ import annotations

import numpy as np


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
