"""The self-supervised methods, in one registry: each says which views it trains on and owns its head and loss.

A head sits on the backbone's embedding (the one the Executor serves) and is dropped when the model is
saved. Hyper-parameters are the papers', scaled to the small batches one cpu or GPU holds:

- SimCLR: 2 views, projection 2048 -> 128, temperature 0.5 (the paper's best below batch 512; 0.1 is for 4096);
- Barlow Twins: 2 asymmetric views, projector 2048-2048-2048 (8192 in the paper: the cross-correlation
  of a batch of 32 cannot estimate 8192^2 entries), lambda 0.0051;
- SwAV: 2 global crops + 4 local crops (6 in the paper), 128-d projection, 128 prototypes (3000 for
  batch 4096), temperature 0.1, Sinkhorn epsilon 0.05 and 3 iterations, prototypes frozen in the first
  epoch; no queue (the paper's remedy for batches under 256), so small batches give coarse codes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clip_image_encoder.training.augmentations import ViewSpec
from clip_image_encoder.training.losses import barlow_twins, nt_xent, swav


def mlp(dims: list[int], last_batch_norm: bool = False) -> nn.Sequential:
    """Linear layers with BatchNorm and ReLU between them, as the three papers' projection heads."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        last = index == len(dims) - 2
        layers.append(nn.Linear(fan_in, fan_out, bias=last))
        if not last:
            layers += [nn.BatchNorm1d(fan_out), nn.ReLU(inplace=True)]
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(fan_out, affine=False))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """A method's trainable part beyond the backbone, and its loss of the views' ``(B, D)`` embeddings."""

    def loss(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def before_optimizer_step(self, epoch: int) -> None:
        """Called after the gradients of a step are complete (SwAV freezes its prototypes here)."""


class SimCLRHead(Head):
    def __init__(self, embedding_dim: int, hidden_dim: int = 2048, out_dim: int = 128, temperature: float = 0.5):
        super().__init__()
        self.projection = mlp([embedding_dim, hidden_dim, out_dim])
        self.temperature = temperature

    def loss(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        first, second = self.projection(torch.cat(embeddings)).chunk(2)
        return nt_xent(first, second, self.temperature)


class BarlowTwinsHead(Head):
    def __init__(self, embedding_dim: int, projector_dim: int = 2048, lambd: float = 0.0051):
        super().__init__()
        self.projector = mlp([embedding_dim, projector_dim, projector_dim, projector_dim])
        self.lambd = lambd

    def loss(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        # Each view through the projector on its own, so BatchNorm sees one view's statistics, as in the paper.
        first, second = (self.projector(view) for view in embeddings)
        return barlow_twins(first, second, self.lambd)


class SwAVHead(Head):
    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        prototypes: int = 128,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        frozen_prototype_epochs: int = 1,
    ):
        super().__init__()
        self.projection = mlp([embedding_dim, hidden_dim, out_dim])
        self.prototypes = nn.Linear(out_dim, prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations
        self.frozen_prototype_epochs = frozen_prototype_epochs

    def loss(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # prototypes stay on the unit sphere, so that scores are cosines
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        projected = F.normalize(self.projection(torch.cat(embeddings)), dim=1)
        scores = self.prototypes(projected).split([len(view) for view in embeddings])
        return swav(list(scores), self.temperature, self.epsilon, self.iterations)

    def before_optimizer_step(self, epoch: int) -> None:
        # Frozen at first, as the paper does, so that the prototypes do not collapse before the projection learns.
        if epoch < self.frozen_prototype_epochs:
            self.prototypes.weight.grad = None


@dataclass(frozen=True)
class Method:
    name: str
    views: tuple[ViewSpec, ...]
    """The views of each image, global (full-size) views first."""
    build_head: Callable[[int], Head]
    """Embedding dimension -> the head, initialised from torch's generator (the trainer seeds it)."""
    good_for: str


_GLOBAL = ViewSpec()
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "simclr",
            (_GLOBAL, _GLOBAL),
            SimCLRHead,
            "instance discrimination: an image against every other image in the batch; the closest fit to "
            "copy detection and instance retrieval; needs batches large enough to hold many negatives",
        ),
        Method(
            "barlow_twins",
            (
                ViewSpec(jitter=(0.4, 0.4, 0.2, 0.1), blur_probability=1.0),
                ViewSpec(jitter=(0.4, 0.4, 0.2, 0.1), blur_probability=0.1, solarize_probability=0.2),
            ),
            BarlowTwinsHead,
            "no negatives: decorrelated features that stay useful at small batch sizes; a good default when memory "
            "is short",
        ),
        Method(
            "swav",
            (
                *(ViewSpec(crop_scale=(0.14, 1.0)),) * 2,
                *(ViewSpec(crop_scale=(0.05, 0.14), size_fraction=96 / 224),) * 4,
            ),
            SwAVHead,
            "clusters (prototypes) and multi-crop: learns from small parts of scenes; for collections with recurring "
            "kinds of content, less for telling near-identical images apart",
        ),
    )
}
