"""The three self-supervised objectives, as plain torch functions of embeddings, as the papers define them.

- SimCLR (Chen et al. 2020): NT-Xent, a softmax over cosine similarities / temperature in which each
  view's positive is the other view of the same image and the negatives are the other ``2N - 2`` views.
- Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' batch-normalised
  embeddings is pushed to the identity; ``lambda`` weighs the off-diagonal (redundancy) terms.
- SwAV (Caron et al. 2020): prototype scores of one view predict the Sinkhorn-Knopp codes of another.

Each is checked against hand-computed values in ``tests/test_training.py``. The functions compute in
float32 whatever the autocast dtype: the exponentials and the correlation sums need its range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss of two ``(N, D)`` batches of projections, row i of each a view of image i; a scalar."""
    embeddings = F.normalize(torch.cat([first, second]).float(), dim=1)
    logits = embeddings @ embeddings.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    size = len(first)
    positives = torch.cat([torch.arange(size, 2 * size), torch.arange(size)]).to(logits.device)
    return F.cross_entropy(logits, positives)


def barlow_twins(first: torch.Tensor, second: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' loss of two ``(N, D)`` batches: sum of (1 - c_ii)^2 plus ``lambd`` times sum of c_ij^2.

    Each dimension is standardised over the batch as the paper's code does (BatchNorm without affine,
    biased variance), so ``c`` is the cross-correlation matrix, ``(D, D)`` with entries in [-1, 1].
    """
    size = len(first)
    correlation = _standardised(first.float(), eps).T @ _standardised(second.float(), eps) / size
    on_diagonal = (torch.diagonal(correlation) - 1).pow(2).sum()
    off_diagonal = correlation.pow(2).sum() - torch.diagonal(correlation).pow(2).sum()
    return on_diagonal + lambd * off_diagonal


def _standardised(batch: torch.Tensor, eps: float) -> torch.Tensor:
    return (batch - batch.mean(dim=0)) / torch.sqrt(batch.var(dim=0, unbiased=False) + eps)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's codes: ``(B, K)`` prototype scores to ``(B, K)`` soft assignments, each row summing to 1.

    The assignment matrix is made to spread the batch evenly over the K prototypes (equipartition),
    by alternately normalising rows and columns of ``exp(scores / epsilon)`` (the paper's Algorithm 1).
    """
    codes = torch.exp(scores.float() / epsilon).T  # (K, B)
    prototypes, batch = codes.shape
    codes /= codes.sum()
    for _ in range(iterations):
        codes /= codes.sum(dim=1, keepdim=True) * prototypes
        codes /= codes.sum(dim=0, keepdim=True) * batch
    return (codes * batch).T


def swav(
    scores: list[torch.Tensor], temperature: float, epsilon: float, iterations: int, assigned_views: int = 2
) -> torch.Tensor:
    """SwAV's swapped prediction over multi-crop views: a scalar.

    ``scores`` holds one ``(B, K)`` tensor of prototype scores (cosines) per view, the global views
    first. The codes of each of the first ``assigned_views`` views (the global crops, as in the paper)
    are predicted from every other view; the loss is the mean cross-entropy over those pairs.
    """
    total, pairs = scores[0].new_zeros((), dtype=torch.float32), 0
    for assigned in range(assigned_views):
        codes = sinkhorn_knopp(scores[assigned].detach(), epsilon, iterations)
        for view, view_scores in enumerate(scores):
            if view == assigned:
                continue
            log_probabilities = F.log_softmax(view_scores.float() / temperature, dim=1)
            total = total - (codes * log_probabilities).sum(dim=1).mean()
            pairs += 1
    return total / pairs
