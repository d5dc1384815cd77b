"""Score -> histogram bin, for the streaming pixel metrics.

Two binnings, both monotone (a higher score never lands in a lower bin), so a
histogram's reverse cumulative sums are the exact TP / FP counts at the bin edges:

- ``LinearBins(lo, hi, bins)``: equal-width bins over a known score range; scores
  outside are clamped into the end bins (and counted in ``clipped``).
- ``LogLinearBins(octave_bins)`` ("auto"): scale-free bins taken from the float32
  bit pattern, i.e. ``octave_bins`` equal-width bins inside every power-of-two
  interval [2**e, 2**(e+1)) (as HDR histograms do). Relative resolution is
  1/octave_bins (default 4096: 0.025 %) whatever the scale, so scores spanning
  orders of magnitude, or clustered in a narrow band at any offset, are resolved
  with no first pass and no range to guess. Magnitudes below 2**min_exp share one
  central bin with 0 (ties at 0 stay exact), magnitudes from 2**max_exp up are
  clamped into the last bin; negative scores are mirrored. The index space is
  large (~400k bins for 2**-24..2**24), but ``AnomalyMetrics`` stores only the
  window of bins the scores actually reach (a few octaves for real maps).

Exact ties always fall in one bin, so heavily tied scores are handled exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ABS_MASK = np.int32(0x7FFFFFFF)
_MANTISSA_BITS = 23


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

    @property
    def size(self) -> int:
        return self.bins

    @property
    def chunk(self) -> int:
        """Granularity of the stored window: all bins at once (there are few)."""
        return self.bins

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Flat float scores -> int64 bin indices."""
        scale = self.bins / (self.hi - self.lo)
        idx = np.floor((scores.astype(np.float64, copy=False) - self.lo) * scale)
        return np.clip(idx, 0, self.bins - 1).astype(np.int64)

    def lower_edges(self) -> np.ndarray:
        """The score at which each bin starts: 'score >= edge' selects this bin and those above."""
        return self.lo + (self.hi - self.lo) * np.arange(self.bins) / self.bins

    def describe(self) -> dict:
        return {"kind": "linear", "lo": self.lo, "hi": self.hi, "bins": self.bins}


@dataclass(frozen=True)
class LogLinearBins:
    octave_bins: int = 4096  # a power of two
    min_exp: int = -24
    max_exp: int = 24

    def __post_init__(self) -> None:
        k = self.octave_bins
        if k < 1 or k & (k - 1) or k > 2**_MANTISSA_BITS:
            raise ValueError(f"octave_bins must be a power of two <= 2**23, got {k}")
        if self.max_exp <= self.min_exp:
            raise ValueError("max_exp must exceed min_exp")

    @property
    def _shift(self) -> int:
        return _MANTISSA_BITS - int(np.log2(self.octave_bins))

    @property
    def _half(self) -> int:
        return (self.max_exp - self.min_exp) * self.octave_bins

    @property
    def size(self) -> int:
        return 2 * self._half + 1

    @property
    def chunk(self) -> int:
        """Granularity of the stored window: one octave."""
        return self.octave_bins

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Flat float scores -> int64 bin indices (center bin = |score| < 2**min_exp)."""
        bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32)
        base = np.int32(np.float32(2.0**self.min_exp).view(np.int32) >> self._shift)
        k = (bits & _ABS_MASK) >> self._shift  # monotone in |score|
        k -= base
        np.clip(k, -1, self._half - 1, out=k)  # -1: below the window, shares the zero bin
        k += 1
        sign = (bits >> 31) | 1  # -1 for negative scores, +1 otherwise
        k *= sign
        idx = k.astype(np.int64)
        idx += self._half
        return idx

    def lower_edges(self) -> np.ndarray:
        """Smallest score of each bin (the zero bin starts at -2**min_exp, exclusive of the one below)."""
        k = np.arange(self.octave_bins)
        octaves = np.arange(self.min_exp, self.max_exp)
        pos = (2.0 ** octaves[:, None] * (1 + k[None, :] / self.octave_bins)).ravel()
        pos_upper = np.append(pos[1:], 2.0**self.max_exp)
        neg = -pos_upper[::-1]  # bin of -x spans (-upper, -lower]
        return np.concatenate([neg, [-(2.0**self.min_exp)], pos])

    def describe(self) -> dict:
        return {"kind": "loglinear", "octave_bins": self.octave_bins,
                "min_exp": self.min_exp, "max_exp": self.max_exp}


Binning = LinearBins | LogLinearBins


def make_binning(score_range: tuple[float, float] | str | None = "auto", bins: int = 4096,
                 octave_bins: int = 4096) -> Binning:
    """``score_range=(lo, hi)``: ``bins`` linear bins; ``"auto"``/None: log-linear bins."""
    if score_range is None or score_range == "auto":
        return LogLinearBins(octave_bins)
    if isinstance(score_range, str):
        raise ValueError(f"score_range must be (lo, hi) or 'auto', got {score_range!r}")
    lo, hi = score_range
    return LinearBins(float(lo), float(hi), int(bins))
