"""Score -> histogram bin, for the streaming pixel metrics.

Every binning is monotone (a higher score never lands in a lower bin), so a histogram's
reverse cumulative sums are the exact TP / FP counts at the bin edges, and exact ties always
share a bin (heavily tied scores are handled exactly).

- ``LinearBins(lo, hi, bins)``: equal-width bins over a known score range; scores outside
  are clamped into the end bins (and counted as clipped).
- "auto" (default): adaptive power-of-two grids (``Grid``) of ``bins`` bins. Bin i of a grid
  holds the scores whose integer key at level ``shift`` minus ``start`` is i. Two key kinds:

  * ``value``: key = floor(score / 2**shift): equal-width bins (any sign, narrow bands);
  * ``order``: key = float32 bit pattern as a monotone integer, >> shift: equal-width bins
    inside each power of two, i.e. log-like (scores spanning orders of magnitude).

  A grid is always the finest that holds the scores seen so far; when later scores widen
  the range it coarsens by merging bin pairs (``shift + 1``), which is exact. So the final
  grid depends only on the range of the scores, not on their order or split over ranks,
  and grids of different ranks align exactly (``common_grid``). The
  metrics keep one histogram per kind and use, per group, the one with less tie mass (fewer
  normal/anomalous pixel pairs sharing a bin): no first pass, no range to guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

KINDS = ("value", "order")
_EXACT_BITS = 52  # value keys stay below 2**52: exact in float64 and in int64


def order_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys with key(a) < key(b) iff a < b for float32 scores (-0.0 counts as 0.0)."""
    values = np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0
    bits = values.view(np.int32)
    return (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)


def key_to_score(keys: np.ndarray) -> np.ndarray:
    """Inverse of ``order_keys``."""
    k = np.asarray(keys, np.int64).astype(np.int32)
    return (k ^ ((k >> 31) & np.int32(0x7FFFFFFF))).view(np.float32).astype(np.float64)


@dataclass(frozen=True)
class Grid:
    """A power-of-two grid of one key kind, and the exact extent of the scores binned on it."""

    kind: str
    shift: int = 0
    start: int = 0
    lo: float = np.inf  # lowest / highest score seen (inf / -inf: none yet)
    hi: float = -np.inf

    @property
    def empty(self) -> bool:
        return self.lo > self.hi

    def keys(self, scores: np.ndarray, shift: int | None = None) -> np.ndarray:
        """Keys of float32 ``scores`` at level ``shift`` (default this grid's)."""
        s = self.shift if shift is None else shift
        if self.kind == "order":
            return order_keys(scores) >> s
        scaled = np.floor(np.asarray(scores, np.float64) * 2.0**-s)
        return np.clip(scaled, -(2.0**62), 2.0**62).astype(np.int64)  # clipped keys never fit a grid

    def index(self, scores: np.ndarray) -> np.ndarray:
        idx = self.keys(scores)
        idx -= self.start
        return idx

    def width(self) -> float | None:
        """Widest bin over the scores' range, in score units (the resolution reached)."""
        if self.empty:
            return None
        if self.kind == "value":
            return 2.0**self.shift
        k = self.keys(np.array([self.lo, self.hi]))
        edges = key_to_score(np.arange(k[0], k[1] + 2, dtype=np.int64) << self.shift)
        edges = edges[np.isfinite(edges)]
        return float(np.diff(edges).max()) if len(edges) > 1 else 0.0


def fit(grid: Grid, lo: float, hi: float, bins: int, min_shift: int | None = None) -> Grid:
    """The finest grid of ``grid.kind`` (not finer than ``min_shift``) whose ``bins`` bins hold [lo, hi]."""
    ends = np.array([lo, hi], np.float32)
    shift = 0 if min_shift is None else min_shift
    if grid.kind == "value":  # keys of the largest magnitude must stay exact (< 2**52)
        top = max(abs(float(lo)), abs(float(hi)), 2.0**-126)
        shift = max(shift if min_shift is not None else -(10**9), int(np.floor(np.log2(top))) - _EXACT_BITS)
        span = float(hi) - float(lo)
        if min_shift is None and span > 0:
            shift = max(shift, int(np.floor(np.log2(span / bins))))
    while True:
        k = grid.keys(ends, shift)
        if k[1] - k[0] < bins:
            return Grid(grid.kind, shift, int(k[0]), float(lo), float(hi))
        shift += 1


def regrid(counts: np.ndarray, old: Grid, new: Grid) -> np.ndarray:
    """Histograms (..., bins) on grid ``old`` re-binned on the coarser or shifted grid ``new`` (exact)."""
    bins = counts.shape[-1]
    if new.shift < old.shift:
        raise ValueError(f"cannot refine a grid (shift {old.shift} -> {new.shift})")
    target = ((old.start + np.arange(bins, dtype=np.int64)) >> (new.shift - old.shift)) - new.start
    rows = counts.reshape(-1, bins)
    used = np.flatnonzero(rows.any(axis=0))
    if len(used) and (target[used].min() < 0 or target[used].max() >= bins):
        raise ValueError("regrid: the new grid does not cover the data")
    out = [np.bincount(target[used], weights=row[used], minlength=bins) for row in rows]
    return np.stack(out).reshape(counts.shape)


def widen(grid: Grid, lo: float, hi: float, bins: int) -> Grid:
    """``grid`` itself when it already holds [lo, hi] (extent updated), else the grid to regrid onto.

    Grids are canonical: the finest one that holds the extent. As the extent only grows, that is
    never finer than the current one, so the final grid depends on the scores seen, not on their
    order or on how they were split over ranks.
    """
    lo, hi = min(grid.lo, float(lo)), max(grid.hi, float(hi))
    if not grid.empty:
        k = grid.keys(np.array([lo, hi], np.float32))
        if k[0] >= grid.start and k[1] < grid.start + bins:
            return replace(grid, lo=lo, hi=hi)
    new = fit(grid, lo, hi, bins)
    return new if grid.empty or new.shift >= grid.shift else fit(grid, lo, hi, bins, grid.shift)


def common_grid(grids: list[Grid], bins: int) -> Grid:
    """One grid holding every state's scores of a group: the canonical grid of their joint extent."""
    live = [g for g in grids if not g.empty]
    if not live:
        return grids[0]
    lo, hi = min(g.lo for g in live), max(g.hi for g in live)
    new = fit(live[0], lo, hi, bins)
    finest = max(g.shift for g in live)
    return new if new.shift >= finest else fit(live[0], lo, hi, bins, finest)


@dataclass(frozen=True)
class LinearBins:
    lo: float
    hi: float
    bins: int = 4096

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ValueError(f"score range ({self.lo}, {self.hi}) is empty")
        if self.bins < 2:
            raise ValueError(f"need at least 2 bins, got {self.bins}")

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Flat float scores -> int64 bin indices."""
        scale = self.bins / (self.hi - self.lo)
        idx = np.floor((scores.astype(np.float64, copy=False) - self.lo) * scale)
        return np.clip(idx, 0, self.bins - 1).astype(np.int64)

    def describe(self) -> dict:
        return {"kind": "linear", "lo": self.lo, "hi": self.hi, "bins": self.bins}
