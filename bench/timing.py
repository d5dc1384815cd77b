"""Timing shared by the benchmarks: candidates measured side by side, alternating call by call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_parts(fns: dict[str, Callable[[], dict[str, float]]], repeats: int,
                      warmup: int = 2) -> dict[str, dict[str, float]]:
    """Each candidate measures itself (a dict of seconds per part); the median of every part over the
    repeats. Alternating the candidates lets load drifts hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(fn())
    out = {}
    for name, runs in samples.items():
        keys = list(dict.fromkeys(k for r in runs for k in r))
        out[name] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    return out


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None,
          clock: Callable[[], float] = time.perf_counter) -> Callable[[], dict[str, float]]:
    """``fn`` as a candidate of ``interleaved_parts``: {"total": seconds of one call}."""
    def run() -> dict[str, float]:
        sync()
        t0 = clock()
        fn()
        sync()
        return {"total": clock() - t0}
    return run


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each candidate; alternating them lets load drifts hit all alike."""
    parts = interleaved_parts({k: timed(fn, clock=clock) for k, fn in fns.items()}, repeats, warmup)
    return {k: v["total"] for k, v in parts.items()}
