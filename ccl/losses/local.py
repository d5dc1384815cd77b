"""Local (dense) class-aware contrastive loss, Eq. 2-4 of the CCL paper, over the global batch.

For one scale, v = L2-normalised projector output of both views, (B, C, h, w).
Both views are anchors (symmetric use): every position q of every local view u.
The paper leaves three readings open; each is a switch (defaults: the paper's text as DESIGN reads it):

- ``positives="class"``: for every same-class partner view p != u (u's other view and both views of
  every same-class sample of the global batch) one positive, the window position of p that matches
  v_u(q) best (Eq. 2-3). ``"view"`` (the official CCL code): u's other view is the only partner, and
  same-class views of other samples are neither positives nor negatives.
- ``negatives="window"``: the candidates A(u, q) are the positions of the k x k window centred on q
  (clipped at the border) in every candidate view (every other view for "class" positives; u's other
  view and every other-class view for "view" positives). ``"all"``: every position of those views
  ("all other spatial features"; u's own map is never a candidate). Positives stay in the window.
- ``match`` given (B, C', h, w) per view: the best window position of a partner is the arg-max of the
  cosine similarity of these features (the official code matches with the frozen teacher's), and the
  positive logit is the projected similarity there; without it, the arg-max of the projected
  similarity itself (Eq. 2-3).

loss(u, q) = logsumexp_A(s/tau) - mean_p s_p/tau; the loss is the mean over this rank's 2*B*h*w
anchors (Eq. 4 with a mean instead of a sum: a constant factor, see ``ccl.models.rdccl`` reduction).

window: 1 (same position; the paper's best), any odd k, or "full" (anywhere).
Memory: anchor positions are processed in blocks whose similarity tensors (positions x 2B local views
x 2M views x candidate positions, twice with ``match``) hold at most chunk * chunk entries (at least
one position per block), i.e. never more than a chunk x chunk matrix; with more than one block each
block is recomputed in the backward pass (activation checkpointing), so no (B*h*w)^2 matrix ever
exists. Window 1 at usual batch sizes fits in one block and runs without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ccl.losses import gather

Window = Union[int, str]
POSITIVES = ("class", "view")
NEGATIVES = ("window", "all")


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


def _window_mask(q0: int, q1: int, h: int, w: int, k: int, device: torch.device) -> torch.Tensor:
    """(Q, h*w) bool: the positions inside the k x k window of each of q0..q1."""
    q = torch.arange(q0, q1, device=device)
    p = torch.arange(h * w, device=device)
    r = k // 2
    return ((q // w)[:, None] - (p // w)[None]).abs().le(r) & ((q % w)[:, None] - (p % w)[None]).abs().le(r)


@dataclass(frozen=True)
class _Masks:
    """Which views take part for each anchor view: (U, V) bool each."""

    candidate: torch.Tensor  # in the denominator
    partner: torch.Tensor  # gives a positive (a subset of candidate)


def _reduce(
    sims: torch.Tensor, match: torch.Tensor | None, den_mask: torch.Tensor | None, pos_mask: torch.Tensor | None,
    masks: _Masks, temperature: float,
) -> torch.Tensor:
    """Sum of per-anchor losses from sims (Q, U, V, K).

    match (Q, U, V, K) or None selects the positive positions; den_mask / pos_mask (Q, K) or None (all
    positions) say which of the K positions are candidates / may be positives.
    """
    logits = sims / temperature
    denominator = logits
    if den_mask is not None:
        denominator = denominator.masked_fill(~den_mask[:, None, None, :], float("-inf"))
    denominator = denominator.masked_fill(~masks.candidate[None, :, :, None], float("-inf"))
    log_denominator = torch.logsumexp(denominator.flatten(2), dim=-1)  # (Q, U)
    select = logits if match is None else match
    if pos_mask is not None:
        select = select.masked_fill(~pos_mask[:, None, None, :], float("-inf"))
    if match is None:
        best = select.amax(dim=-1)  # (Q, U, V): Eq. 2-3, finite since the window centre is always valid
    else:
        best = logits.gather(-1, select.argmax(dim=-1, keepdim=True)).squeeze(-1)
    count = masks.partner.sum(dim=-1)  # (U,)
    positives = torch.where(masks.partner[None], best, torch.zeros_like(best)).sum(dim=-1) / count.clamp(min=1)
    loss = log_denominator - positives  # (Q, U)
    return torch.where(count[None] > 0, loss, torch.zeros_like(loss)).sum()


@dataclass(frozen=True)
class _Block:
    """What every block of anchor positions needs besides the features."""

    h: int
    w: int
    k: int | None  # window side; None = the full map
    negatives: str
    masks: _Masks
    temperature: float


def _windowed_sims(anchors: torch.Tensor, cands: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """anchors (Q, U, C), cands (h*w, C, V) position-major; idx (Q, K) window positions or None (same position)."""
    q, u, _ = anchors.shape
    if idx is None:
        return torch.bmm(anchors, cands).unsqueeze(-1)  # cands already cut to q0..q1
    windows = cands[idx].permute(0, 2, 3, 1).reshape(q, cands.shape[1], -1)  # (Q, C, V*K)
    return torch.bmm(anchors, windows).view(q, u, cands.shape[2], idx.shape[1])  # (Q, U, V, K)


def _full_sims(anchors: torch.Tensor, cand_matrix: torch.Tensor, n_views: int) -> torch.Tensor:
    """anchors (Q, U, C), cand_matrix (C, V*h*w) -> (Q, U, V, h*w)."""
    q, u, c = anchors.shape
    return (anchors.reshape(q * u, c) @ cand_matrix).view(q, u, n_views, -1)


def _block_loss(
    anchors: torch.Tensor, cands: torch.Tensor, m_anchors: torch.Tensor | None, m_cands: torch.Tensor | None,
    q0: int, q1: int, spec: _Block,
) -> torch.Tensor:
    """Loss sum of anchor positions q0..q1. Features are position-major: anchors (h*w, U, C); cands
    (h*w, C, V) for window negatives, (C, V*h*w) for all positions; m_* the same for ``match``."""
    a = anchors[q0:q1]
    ma = m_anchors[q0:q1] if m_anchors is not None else None
    k, device = spec.k, anchors.device
    if spec.negatives == "window" and k is not None:
        if k == 1:
            sims = _windowed_sims(a, cands[q0:q1], None)
            match = _windowed_sims(ma, m_cands[q0:q1], None) if ma is not None else None
            return _reduce(sims, match, None, None, spec.masks, spec.temperature)
        idx, valid = _window_index(q0, q1, spec.h, spec.w, k, device)
        sims = _windowed_sims(a, cands, idx)
        match = _windowed_sims(ma, m_cands, idx) if ma is not None else None
        return _reduce(sims, match, valid, valid, spec.masks, spec.temperature)
    n_views = spec.masks.candidate.shape[1]
    sims = _full_sims(a, cands, n_views)
    match = _full_sims(ma, m_cands, n_views) if ma is not None else None
    pos_mask = _window_mask(q0, q1, spec.h, spec.w, k, device) if k is not None else None
    return _reduce(sims, match, None, pos_mask, spec.masks, spec.temperature)


def _view_masks(labels: torch.Tensor, all_labels: torch.Tensor, offset: int, positives: str) -> _Masks:
    """Masks (U, V) for the local views (sample-major: 2i anchor, 2i+1 augmented) against all views."""
    view_labels = labels.repeat_interleave(2)  # (U,)
    all_view_labels = all_labels.repeat_interleave(2)  # (V,)
    u = torch.arange(view_labels.shape[0], device=labels.device)
    own = torch.zeros(u.shape[0], all_view_labels.shape[0], dtype=torch.bool, device=labels.device)
    own[u, u + 2 * offset] = True
    same_class = view_labels[:, None] == all_view_labels[None, :]
    if positives == "class":
        return _Masks(candidate=~own, partner=same_class & ~own)
    sibling = torch.zeros_like(own)
    sibling[u, (u ^ 1) + 2 * offset] = True  # 2i <-> 2i + 1: the sample's other view
    return _Masks(candidate=sibling | ~same_class, partner=sibling)


def _position_major(views: torch.Tensor, gathered: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, C, h, w) local and (M, 2, C, h, w) gathered views -> anchors (h*w, U, C) and candidates
    (C, V*h*w) when ``full`` else (h*w, C, V), each contiguous for the block products."""
    local = views.flatten(0, 1).flatten(2)  # (U, C, h*w)
    cands = gathered.flatten(0, 1).flatten(2)  # (V, C, h*w)
    anchors = local.permute(2, 0, 1).contiguous()
    if full:
        return anchors, cands.permute(1, 0, 2).reshape(cands.shape[1], -1)
    return anchors, cands.permute(2, 1, 0).contiguous()


def local_contrastive_loss(
    anchor: torch.Tensor,
    augmented: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    window: Window = 1,
    rank: int = 0,
    world_size: int = 1,
    chunk: int = 4096,
    positives: str = "class",
    negatives: str = "window",
    match: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Local CL for one scale: anchor / augmented (B, C, h, w) projected features, labels (B,).

    ``match``: (anchor, augmented) maps (B, C', h, w) that choose the positive positions (no gradient).
    Returns the mean over this rank's 2*B*h*w anchor positions (see module docstring).
    """
    if anchor.shape != augmented.shape:
        raise ValueError(f"views differ in shape: {tuple(anchor.shape)} vs {tuple(augmented.shape)}")
    if positives not in POSITIVES or negatives not in NEGATIVES:
        raise ValueError(f"local CL positives must be one of {POSITIVES} and negatives one of {NEGATIVES}, "
                         f"got {positives!r} / {negatives!r}")
    b, _, h, w = anchor.shape
    k = _check_window(window, h, w)
    full = k is None or negatives == "all"
    views = F.normalize(torch.stack([anchor, augmented], dim=1), dim=2)  # (B, 2, C, h, w)
    gathered, offset = gather.gather_with_grad(views, rank, world_size)  # (M, 2, C, h, w)
    all_labels, _ = gather.gather_no_grad(labels, rank, world_size)  # (M,)
    anchors, cands = _position_major(views, gathered, full)
    m_anchors = m_cands = None
    if match is not None:
        if match[0].shape[0] != b or match[0].shape[2:] != (h, w) or match[0].shape != match[1].shape:
            raise ValueError(f"match maps {tuple(match[0].shape)} / {tuple(match[1].shape)} do not fit "
                             f"the projected maps {tuple(anchor.shape)}")
        m_views = F.normalize(torch.stack([match[0], match[1]], dim=1).detach(), dim=2)
        m_gathered, _ = gather.gather_no_grad(m_views, rank, world_size)
        m_anchors, m_cands = _position_major(m_views, m_gathered, full)
    spec = _Block(h, w, k, negatives, _view_masks(labels, all_labels, offset, positives), temperature)
    total = _blockwise_sum(anchors, cands, m_anchors, m_cands, spec, chunk)
    return total / (2 * b * h * w)


def _blockwise_sum(
    anchors: torch.Tensor, cands: torch.Tensor, m_anchors: torch.Tensor | None, m_cands: torch.Tensor | None,
    spec: _Block, chunk: int,
) -> torch.Tensor:
    """Sum of the anchor losses, block by block of anchor positions (see the module docstring on memory)."""
    hw, n_local = anchors.shape[0], anchors.shape[1]
    n_views = spec.masks.candidate.shape[1]
    full = spec.k is None or spec.negatives == "all"
    per_position = n_local * n_views * (hw if full else spec.k * spec.k)  # similarities of one position
    per_position *= 2 if m_anchors is not None else 1
    step = max(1, chunk * chunk // per_position)  # positions per block
    use_checkpoint = step < hw and torch.is_grad_enabled() and anchors.requires_grad
    total = anchors.new_zeros(())
    for q0 in range(0, hw, step):
        args = (anchors, cands, m_anchors, m_cands, q0, min(hw, q0 + step), spec)
        part = checkpoint(_block_loss, *args, use_reentrant=False) if use_checkpoint else _block_loss(*args)
        total = total + part
    return total
