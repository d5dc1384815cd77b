"""Supervised contrastive loss (Eq. 1 of the CCL paper) over the global batch.

    L(i) = -1/|P(i)| sum_{p in P(i)} log( exp(f_i.f_p/tau) / sum_{a in A(i)} exp(f_i.f_a/tau) )

A(i) is every candidate of every rank except i itself, P(i) the candidates with
the same key (class label, or instance id for InfoNCE) except i. Unlike the
official CCL code the anchor is not its own positive and there is no extra
term on the negatives (DESIGN section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ccl.losses import gather
from ccl.precision import float32_math


def contrast_rows(
    anchors: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, exclude: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-anchor Eq. 1 from L2-normalised rows.

    anchors (N, D), candidates (M, D), positive / exclude (N, M) bool masks;
    excluded candidates leave both A and P. Returns (N,); 0 where P is empty.
    """
    logits = anchors @ candidates.T / temperature  # (N, M)
    log_denominator = torch.logsumexp(logits.masked_fill(exclude, float("-inf")), dim=1)  # (N,)
    positive = positive & ~exclude
    count = positive.sum(dim=1)  # (N,)
    positive_logits = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1)  # (N,)
    loss = log_denominator - positive_logits / count.clamp(min=1)
    # An anchor without positives contributes nothing but is still counted in the mean.
    return torch.where(count > 0, loss, torch.zeros_like(loss))


@float32_math
def keyed_supcon(
    features: torch.Tensor, keys: torch.Tensor, temperature: float, rank: int, world_size: int
) -> torch.Tensor:
    """Mean Eq. 1 over this rank's rows of `features` (N, D) against every rank's rows, positives by equal key."""
    f = F.normalize(features, dim=1)  # (N, D)
    candidates, offset = gather.gather_with_grad(f, rank, world_size)  # (M, D)
    all_keys, _ = gather.gather_no_grad(keys, rank, world_size)  # (M,)
    n = f.shape[0]
    own = torch.arange(n, device=f.device)
    exclude = torch.zeros(n, candidates.shape[0], dtype=torch.bool, device=f.device)
    exclude[own, own + offset] = True
    positive = keys[:, None] == all_keys[None, :]  # (N, M)
    return contrast_rows(f, candidates, positive, exclude, temperature).mean()


@float32_math
def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Eq. 1 for this rank's anchors `features` (N, D) (normalised here) against all ranks' candidates.

    Returns the mean over this rank's anchors (an anchor without positives counts as 0).
    """
    return keyed_supcon(features, labels, temperature, rank, world_size)


def two_views(anchor: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the two views of a batch: features (2B, D) and labels (2B,)."""
    return torch.cat([anchor, augmented], dim=0), torch.cat([labels, labels], dim=0)


@float32_math
def global_contrastive_loss(
    anchor: torch.Tensor,
    augmented: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Global CL (Eq. 5): SupCon over the 2B pooled neck features (B, D) of both views.

    The other view of a sample has its label, so it is always among the positives.
    """
    features, view_labels = two_views(anchor, augmented, labels)
    return supcon_loss(features, view_labels, temperature, rank, world_size)
