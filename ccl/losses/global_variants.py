"""Alternatives for the global term (ablation, Table 6 of the paper) and the registry of all of them.

Every entry has the signature of global_contrastive_loss:
    fn(anchor (B, D), augmented (B, D), labels (B,), temperature, rank, world_size) -> 0-dim loss
and takes the mean over this rank's 2B view-anchors against the global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ccl.losses import gather
from ccl.losses.supcon import global_contrastive_loss, keyed_supcon, two_views
from ccl.precision import float32_math

# Instance ids must differ across ranks without a size exchange: rank-major blocks.
_IDS_PER_RANK = 1 << 30

TRIPLET_MARGIN = 0.2


def _instance_ids(batch: int, rank: int, device: torch.device) -> torch.Tensor:
    ids = torch.arange(batch, device=device) + rank * _IDS_PER_RANK
    return torch.cat([ids, ids])  # (2B,) both views share the id


def _similarities(
    anchor: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities of the local views to all views, with masks.

    Returns sims (2B, M), not_self (2B, M), same_class (2B, M), same_instance (2B, M).
    """
    features, view_labels = two_views(anchor, augmented, labels)
    f = F.normalize(features, dim=1)  # (2B, D)
    candidates, offset = gather.gather_with_grad(f, rank, world_size)  # (M, D)
    all_labels, _ = gather.gather_no_grad(view_labels, rank, world_size)
    ids = _instance_ids(anchor.shape[0], rank, f.device)
    all_ids, _ = gather.gather_no_grad(ids, rank, world_size)
    n = f.shape[0]
    not_self = torch.ones(n, candidates.shape[0], dtype=torch.bool, device=f.device)
    own = torch.arange(n, device=f.device)
    not_self[own, own + offset] = False
    same_class = (view_labels[:, None] == all_labels[None, :]) & not_self
    same_instance = (ids[:, None] == all_ids[None, :]) & not_self
    return f @ candidates.T, not_self, same_class, same_instance


@float32_math
def infonce_loss(
    anchor: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor,
    temperature: float = 0.1, rank: int = 0, world_size: int = 1,
) -> torch.Tensor:
    """InfoNCE / NT-Xent: the only positive is the sample's other view; same-class views are negatives."""
    features, _ = two_views(anchor, augmented, labels)
    ids = _instance_ids(anchor.shape[0], rank, anchor.device)
    return keyed_supcon(features, ids, temperature, rank, world_size)


@float32_math
def triplet_loss(
    anchor: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor,
    temperature: float = 0.1, rank: int = 0, world_size: int = 1,
) -> torch.Tensor:
    """Batch-hard triplet on cosine similarity, margin TRIPLET_MARGIN (temperature unused).

    Per view-anchor: hardest same-class positive vs hardest other-class negative; 0 without a negative.
    """
    sims, not_self, same_class, _ = _similarities(anchor, augmented, labels, rank, world_size)
    negative = not_self & ~same_class
    hardest_pos = sims.masked_fill(~same_class, float("inf")).amin(dim=1)  # (2B,)
    hardest_neg = sims.masked_fill(~negative, float("-inf")).amax(dim=1)  # (2B,)
    has_both = same_class.any(dim=1) & negative.any(dim=1)
    loss = F.relu(TRIPLET_MARGIN + hardest_neg - hardest_pos)
    return torch.where(has_both, loss, torch.zeros_like(loss)).mean()


@float32_math
def npairs_loss(
    anchor: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor,
    temperature: float = 0.1, rank: int = 0, world_size: int = 1,
) -> torch.Tensor:
    """Multi-class N-pairs: log(1 + sum_n exp((s_in - s_ip) / tau)), p the other view, n other-class views."""
    sims, not_self, same_class, same_instance = _similarities(anchor, augmented, labels, rank, world_size)
    s_pos = torch.where(same_instance, sims, torch.zeros_like(sims)).sum(dim=1)  # (2B,) exactly one
    negative = not_self & ~same_class
    margins = (sims - s_pos[:, None]) / temperature  # (2B, M)
    margins = margins.masked_fill(~negative, float("-inf"))
    zero = margins.new_zeros(margins.shape[0], 1)
    return torch.logsumexp(torch.cat([zero, margins], dim=1), dim=1).mean()


GlobalLoss = Callable[..., torch.Tensor]

global_losses: dict[str, GlobalLoss] = {
    "supcon": global_contrastive_loss,
    "triplet": triplet_loss,
    "npairs": npairs_loss,
    "infonce": infonce_loss,
}
