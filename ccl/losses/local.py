"""Local (dense) class-aware contrastive loss, Eq. 2-4 of the CCL paper, over the global batch.

For one scale, v = L2-normalised projector output of both views, (B, C, h, w).
Both views are anchors (symmetric use): every position q of every local view u.
- Candidates A(u, q): the positions of the k x k window centred on q (clipped at
  the border) in every OTHER view of the global batch (u's own other view included).
- Positives: for every same-class partner view p != u (u's other view and both
  views of every same-class sample of the global batch), the window position of
  p most similar to v_u(q) (Eq. 2-3: arg-max of cosine similarity).
- loss(u, q) = logsumexp_A(s/tau) - mean_p max_window(s_p/tau); the loss is the
  mean over this rank's 2*B*h*w anchors (Eq. 4 with a mean instead of a sum).

window: 1 (same position; the paper's best), any odd k, or "full" (anywhere).
Memory: anchor positions are processed in blocks whose similarity tensor
(positions x 2B local views x 2M views x window) holds at most chunk * chunk
entries (at least one position per block), i.e. never more than a chunk x chunk
matrix; with more than one block each block is recomputed in the backward pass
(activation checkpointing), so no (B*h*w)^2 matrix ever exists. Window 1 at
usual batch sizes fits in one block and runs without recomputation.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ccl.losses import gather

Window = Union[int, str]


def _check_window(window: Window, h: int, w: int) -> int | None:
    """Window side as an odd int, or None for "full" (also when k covers the map from every centre)."""
    if window == "full":
        return None
    if isinstance(window, str) and window.isdigit():  # e.g. "3" from a command-line override
        window = int(window)
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"local CL window must be a positive odd int or 'full', got {window!r}")
    return None if window >= 2 * max(h, w) - 1 else window


def _window_index(q0: int, q1: int, h: int, w: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (Q, k*k) of the k x k window of positions q0..q1 (clamped) and their validity."""
    q = torch.arange(q0, q1, device=device)
    r = k // 2
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    yy = (q // w)[:, None] + dy.reshape(1, -1)  # (Q, K)
    xx = (q % w)[:, None] + dx.reshape(1, -1)
    valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    return yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1), valid


def _reduce(
    sims: torch.Tensor, valid: torch.Tensor | None, own_view: torch.Tensor, partner: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Sum of per-anchor losses from sims (Q, U, V, K) with valid (Q, K), own_view / partner (U, V)."""
    logits = sims / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    denominator = logits.masked_fill(own_view[None, :, :, None], float("-inf"))
    log_denominator = torch.logsumexp(denominator.flatten(2), dim=-1)  # (Q, U)
    best = logits.amax(dim=-1)  # (Q, U, V): Eq. 2-3, finite since the window centre is always valid
    count = partner.sum(dim=-1)  # (U,)
    positives = torch.where(partner[None], best, torch.zeros_like(best)).sum(dim=-1) / count.clamp(min=1)
    loss = log_denominator - positives  # (Q, U)
    return torch.where(count[None] > 0, loss, torch.zeros_like(loss)).sum()


def _windowed_block(
    anchors: torch.Tensor, cands: torch.Tensor, q0: int, q1: int, h: int, w: int, k: int,
    own_view: torch.Tensor, partner: torch.Tensor, temperature: float,
) -> torch.Tensor:
    """anchors (h*w, U, C) and cands (h*w, C, V), position-major so that every bmm operand is contiguous."""
    a = anchors[q0:q1]  # (Q, U, C)
    q, u, _ = a.shape
    if k == 1:
        return _reduce(torch.bmm(a, cands[q0:q1]).unsqueeze(-1), None, own_view, partner, temperature)
    idx, valid = _window_index(q0, q1, h, w, k, a.device)  # (Q, K)
    windows = cands[idx].permute(0, 2, 3, 1).reshape(q, cands.shape[1], -1)  # (Q, C, V*K)
    sims = torch.bmm(a, windows).view(q, u, cands.shape[2], k * k)  # (Q, U, V, K)
    return _reduce(sims, valid, own_view, partner, temperature)


def _full_block(
    anchors: torch.Tensor, cand_matrix: torch.Tensor, q0: int, q1: int, n_views: int,
    own_view: torch.Tensor, partner: torch.Tensor, temperature: float,
) -> torch.Tensor:
    """anchors (h*w, U, C), cand_matrix (C, V*h*w)."""
    a = anchors[q0:q1]  # (Q, U, C)
    q, u, c = a.shape
    sims = (a.reshape(q * u, c) @ cand_matrix).view(q, u, n_views, -1)  # (Q, U, V, h*w)
    return _reduce(sims, None, own_view, partner, temperature)


def _view_masks(
    labels: torch.Tensor, all_labels: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """own_view (U, V): the anchor's own view; partner (U, V): same class, another view."""
    view_labels = labels.repeat_interleave(2)  # (U,) views stacked sample-major
    all_view_labels = all_labels.repeat_interleave(2)  # (V,)
    u = torch.arange(view_labels.shape[0], device=labels.device)
    own_view = torch.zeros(u.shape[0], all_view_labels.shape[0], dtype=torch.bool, device=labels.device)
    own_view[u, u + 2 * offset] = True
    partner = (view_labels[:, None] == all_view_labels[None, :]) & ~own_view
    return own_view, partner


def local_contrastive_loss(
    anchor: torch.Tensor,
    augmented: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    window: Window = 1,
    rank: int = 0,
    world_size: int = 1,
    chunk: int = 4096,
) -> torch.Tensor:
    """Local CL for one scale: anchor / augmented (B, C, h, w) projected features, labels (B,).

    Returns the mean over this rank's 2*B*h*w anchor positions (see module docstring).
    """
    if anchor.shape != augmented.shape:
        raise ValueError(f"views differ in shape: {tuple(anchor.shape)} vs {tuple(augmented.shape)}")
    _, _, h, w = anchor.shape
    k = _check_window(window, h, w)
    views = F.normalize(torch.stack([anchor, augmented], dim=1), dim=2)  # (B, 2, C, h, w)
    gathered, offset = gather.gather_with_grad(views, rank, world_size)  # (M, 2, C, h, w)
    all_labels, _ = gather.gather_no_grad(labels, rank, world_size)  # (M,)
    local = views.flatten(0, 1).flatten(2)  # (U=2B, C, h*w)
    cands = gathered.flatten(0, 1).flatten(2)  # (V=2M, C, h*w)
    own_view, partner = _view_masks(labels, all_labels, offset)
    total = _blockwise_sum(local, cands, h, w, k, own_view, partner, temperature, chunk)
    return total / (local.shape[0] * h * w)


def _blockwise_sum(
    local: torch.Tensor, cands: torch.Tensor, h: int, w: int, k: int | None,
    own_view: torch.Tensor, partner: torch.Tensor, temperature: float, chunk: int,
) -> torch.Tensor:
    """Sum of the anchor losses of local (U, C, h*w) against cands (V, C, h*w), block by block."""
    n_local, n_views, hw = local.shape[0], cands.shape[0], h * w
    anchors = local.permute(2, 0, 1).contiguous()  # (h*w, U, C)
    if k is None:
        cands = cands.permute(1, 0, 2).reshape(cands.shape[1], n_views * hw)  # (C, V*h*w)
    else:
        cands = cands.permute(2, 1, 0).contiguous()  # (h*w, C, V)
    per_position = n_local * n_views * (hw if k is None else k * k)  # similarities of one position
    step = max(1, chunk * chunk // per_position)  # positions per block
    use_checkpoint = step < hw and torch.is_grad_enabled() and anchors.requires_grad
    total = anchors.new_zeros(())
    for q0 in range(0, hw, step):
        q1 = min(hw, q0 + step)
        if k is None:
            args = (anchors, cands, q0, q1, n_views, own_view, partner, temperature)
            fn = _full_block
        else:
            args = (anchors, cands, q0, q1, h, w, k, own_view, partner, temperature)
            fn = _windowed_block
        part = checkpoint(fn, *args, use_reentrant=False) if use_checkpoint else fn(*args)
        total = total + part
    return total
