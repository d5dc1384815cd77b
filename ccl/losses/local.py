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

Layout and cost: the two views of a scale are one (2B, C, h, w) batch, anchor views first, as the
model's teacher and projector run them (``local_contrastive_views``; ``local_contrastive_loss`` takes
the two halves). They become rows (2B, h*w, C): one transposing copy, none for channels_last
maps; rows are gathered across ranks as they are and never stacked or permuted again. With window 1 a
cosine is the dot product of two raw rows divided by their norms: the divisions act on the similarity
tensor (2B x 2M per position, fewer numbers than the 2B x C rows), and the whole scale is one batched
matrix product over strided views of the rows. Windows and the full map compare each row with many,
so there the rows are normalised once instead.
Memory: anchor positions are processed in blocks whose similarity tensors (positions x 2B local views
x 2M views x candidate positions, twice with ``match``) hold at most chunk * chunk entries (at least
one position per block), i.e. never more than a chunk x chunk matrix; with more than one block each
block is recomputed in the backward pass (activation checkpointing), so no (B*h*w)^2 matrix ever
exists. Window 1 at usual batch sizes fits in one block and runs without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ccl.losses import gather
from ccl.precision import float32_math

Window = int | str
POSITIVES = ("class", "view")
NEGATIVES = ("window", "all")
EPS = 1e-12  # F.normalize's floor of a norm: a zero feature has cosine 0 with everything


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


@dataclass(frozen=True)
class _Rows:
    """One kind of features (projected, or the ``match`` maps): this rank's rows (U, h*w, C) and every
    rank's (V, h*w, C). With window 1 the rows stay raw and ``*_norms`` (.., h*w) hold their norms, which
    are divided out of the similarities (2B x 2M per position: fewer numbers than the rows); a window or
    the full map compares each row with many, so there the rows are normalised once (norms None)."""

    local: torch.Tensor
    every: torch.Tensor
    local_norms: torch.Tensor | None
    every_norms: torch.Tensor | None


def _rows(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) maps -> contiguous (N, h*w, C) rows: one copy, none for channels_last maps."""
    return maps.permute(0, 2, 3, 1).flatten(1, 2).contiguous()


def _prepare(local: torch.Tensor, every: torch.Tensor, fold_norms: bool) -> _Rows:
    """Rows and norms floored at EPS (F.normalize's); ``every is local`` at world size 1."""
    norms = local.norm(dim=-1, keepdim=True).clamp_min(EPS)
    every_norms = norms if every is local else every.norm(dim=-1, keepdim=True).clamp_min(EPS)
    if fold_norms:
        return _Rows(local, every, norms[..., 0], every_norms[..., 0])
    unit = local / norms
    return _Rows(unit, unit if every is local else every / every_norms, None, None)


def _cosines(a: torch.Tensor, na: torch.Tensor | None, c: torch.Tensor, nc: torch.Tensor | None) -> torch.Tensor:
    """Cosines (Q, U, N) of anchor rows a (Q, U, C) and candidate rows c (Q, N, C), given their norms
    (None: unit rows)."""
    dots = torch.bmm(a, c.transpose(1, 2))
    return dots if na is None else dots / (na[:, :, None] * nc[:, None, :])


def _similarities(f: _Rows, q0: int, q1: int, spec: _Block, idx: torch.Tensor | None) -> torch.Tensor:
    """Cosines (Q, U, V, K) of the local rows at positions q0..q1 with every view's candidate positions:
    the same position (window 1, norms folded in), the window positions ``idx`` (Q, K), or every
    position (unit rows)."""
    a = f.local[:, q0:q1].transpose(0, 1)  # (Q, U, C), strided: no copy
    if spec.negatives == "window" and spec.k == 1:
        na, nc = f.local_norms[:, q0:q1].transpose(0, 1), f.every_norms[:, q0:q1].transpose(0, 1)
        return _cosines(a, na, f.every[:, q0:q1].transpose(0, 1), nc).unsqueeze(-1)
    if idx is not None:
        c = f.every.transpose(0, 1)[idx]  # (Q, K, V, C)
        q, k, v = c.shape[:3]
        return _cosines(a, None, c.flatten(1, 2), None).view(q, -1, k, v).transpose(2, 3)
    v, hw = f.every.shape[:2]
    dots = a.reshape(-1, a.shape[-1]) @ f.every.reshape(v * hw, -1).T  # (Q*U, V*h*w)
    return dots.view(a.shape[0], a.shape[1], v, hw)


def _block_loss(f: _Rows, m: _Rows | None, q0: int, q1: int, spec: _Block) -> torch.Tensor:
    """Loss sum of the anchor positions q0..q1; ``m`` the rows that pick the positives (``match``)."""
    device, k = f.local.device, spec.k
    idx = den_mask = pos_mask = None
    if k is not None and k > 1 and spec.negatives == "window":  # candidates: the window's positions
        idx, den_mask = _window_index(q0, q1, spec.h, spec.w, k, device)
        pos_mask = den_mask
    elif k is not None and spec.negatives == "all":  # candidates: every position; positives: the window's
        pos_mask = _window_mask(q0, q1, spec.h, spec.w, k, device)
    sims = _similarities(f, q0, q1, spec, idx)
    match = _similarities(m, q0, q1, spec, idx) if m is not None else None
    return _reduce(sims, match, den_mask, pos_mask, spec.masks, spec.temperature)


def _view_masks(view_labels: torch.Tensor, all_view_labels: torch.Tensor, offset: int, positives: str) -> _Masks:
    """Masks (U, V) of the local views (view-major: U/2 anchor views, then their augmented views) against
    every view; this rank's views are columns offset..offset+U."""
    n = view_labels.shape[0]
    u = torch.arange(n, device=view_labels.device)
    own = torch.zeros(n, all_view_labels.shape[0], dtype=torch.bool, device=view_labels.device)
    own[u, u + offset] = True
    same_class = view_labels[:, None] == all_view_labels[None, :]
    if positives == "class":
        return _Masks(candidate=~own, partner=same_class & ~own)
    sibling = torch.zeros_like(own)
    sibling[u, (u + n // 2) % n + offset] = True  # a sample's anchor view <-> its augmented view
    return _Masks(candidate=sibling | ~same_class, partner=sibling)


@float32_math
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
    if match is not None:  # how the pair fits the projected maps is checked once, below
        if match[0].shape != match[1].shape:
            raise ValueError(f"match maps differ in shape: {tuple(match[0].shape)} vs {tuple(match[1].shape)}")
        match = torch.cat([match[0], match[1]])
    return local_contrastive_views(torch.cat([anchor, augmented]), labels, temperature, window, rank, world_size,
                                   chunk, positives, negatives, match)


@float32_math
def local_contrastive_views(
    views: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    window: Window = 1,
    rank: int = 0,
    world_size: int = 1,
    chunk: int = 4096,
    positives: str = "class",
    negatives: str = "window",
    match: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local CL for one scale with both views in one batch: ``views`` (2B, C, h, w) holds the B anchor
    views, then their B augmented views (the model's teacher / projector batch); labels (B,).

    ``match`` (2B, C', h, w) in the same order chooses the positive positions (no gradient). Equal to
    ``local_contrastive_loss(views[:B], views[B:], ...)`` without copying the halves apart.
    """
    if positives not in POSITIVES or negatives not in NEGATIVES:
        raise ValueError(f"local CL positives must be one of {POSITIVES} and negatives one of {NEGATIVES}, "
                         f"got {positives!r} / {negatives!r}")
    n, _, h, w = views.shape
    if n != 2 * labels.shape[0]:
        raise ValueError(f"{n} views for {labels.shape[0]} labels: expected anchor and augmented view of each sample")
    k = _check_window(window, h, w)
    fold = negatives == "window" and k == 1  # window 1: norms divided out of the similarities
    rows = _rows(views)
    view_labels = torch.cat([labels, labels])
    gathered, offset = gather.gather_with_grad(rows, rank, world_size)  # (V, h*w, C)
    all_view_labels, _ = gather.gather_no_grad(view_labels, rank, world_size)
    m = None
    if match is not None:
        if match.shape[0] != n or match.shape[2:] != views.shape[2:]:
            raise ValueError(f"match maps {tuple(match.shape)} do not fit the projected maps {tuple(views.shape)}")
        m_rows = _rows(match.detach())
        m = _prepare(m_rows, gather.gather_no_grad(m_rows, rank, world_size)[0], fold)
    spec = _Block(h, w, k, negatives, _view_masks(view_labels, all_view_labels, offset, positives), temperature)
    return _blockwise_sum(_prepare(rows, gathered, fold), m, spec, chunk) / (n * h * w)


def _blockwise_sum(f: _Rows, m: _Rows | None, spec: _Block, chunk: int) -> torch.Tensor:
    """Sum of the anchor losses, block by block of anchor positions (see the module docstring on memory)."""
    n_local, hw = f.local.shape[:2]
    n_views = f.every.shape[0]
    full = spec.k is None or spec.negatives == "all"
    per_position = n_local * n_views * (hw if full else spec.k * spec.k)  # similarities of one position
    per_position *= 2 if m is not None else 1
    step = max(1, chunk * chunk // per_position)  # positions per block
    use_checkpoint = step < hw and torch.is_grad_enabled() and f.local.requires_grad
    total = f.local.new_zeros(())
    for q0 in range(0, hw, step):
        args = (f, m, q0, min(hw, q0 + step), spec)
        part = checkpoint(_block_loss, *args, use_reentrant=False) if use_checkpoint else _block_loss(*args)
        total = total + part
    return total
