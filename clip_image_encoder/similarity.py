"""Vector arithmetic on embeddings: l2 normalisation and cosine similarity."""

from __future__ import annotations

import numpy as np


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Scale each row of ``(N, D)`` (or one ``(D,)`` vector) to unit length; zero rows stay zero."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.where(norms == 0, 1, norms)
