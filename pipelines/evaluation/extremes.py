"""The heatmaps of an evaluation: the highest- and lowest-scoring samples per group, over all ranks.

While scoring, each rank keeps its ``n`` extremes per group in two bounded heaps (``Extremes``; the
image, map and mask are taken only for a sample that enters a heap). At the end the ranks exchange
their candidates, choose the global extremes (``select_extremes``), and each rank renders the panels
it owns on one colour scale per group (``render_extremes``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count
from typing import Any

import numpy as np

from pipelines.base import visualize
from pipelines.base.collectives import gather_objects

Payload = Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


class Extremes:
    """The ``n`` highest- and lowest-scoring samples per group, kept while streaming (bounded memory)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.heaps: dict[tuple[str, str], list] = {}
        self._tick = count()

    def offer(self, group: str, score: float, key: str, payload: Payload) -> None:
        """Keep the sample if it is among the extremes so far; ``payload`` is only called then."""
        if self.n <= 0:
            return
        for kind, rank_value in (("top", score), ("bottom", -score)):
            heap = self.heaps.setdefault((group, kind), [])
            if len(heap) < self.n or rank_value > heap[0][0]:
                item = (rank_value, next(self._tick), key, score, payload())
                (heapq.heappush if len(heap) < self.n else heapq.heapreplace)(heap, item)

    def candidates(self) -> list[tuple[str, str, float, str]]:
        """(group, kind, score, key) of everything kept."""
        return [(g, kind, it[3], it[2]) for (g, kind), heap in self.heaps.items() for it in heap]

    def payload(self, group: str, kind: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return next(it[4] for it in self.heaps[(group, kind)] if it[2] == key)


def select_extremes(candidates: list[tuple[str, str, float, str, int]],
                    n: int) -> list[tuple[str, str, int, float, str, int]]:
    """Global choice from every rank's candidates: (group, kind, position, score, key, rank)."""
    chosen = []
    for group, kind in sorted({(c[0], c[1]) for c in candidates}):
        pool = [c for c in candidates if c[0] == group and c[1] == kind]
        pool.sort(key=lambda c: (-c[2] if kind == "top" else c[2], c[3]))
        chosen += [(group, kind, i, c[2], c[3], c[4]) for i, c in enumerate(pool[:n])]
    return chosen


def render_extremes(extremes: Extremes, acc: Any, rank: int) -> list[tuple[str, str, int, float, str, bytes]]:
    """Every rank renders its chosen samples as PNG panels; the list of all of them, on every rank."""
    candidates = [c + (r,) for r, cands in enumerate(gather_objects(acc, extremes.candidates())) for c in cands]
    chosen = select_extremes(candidates, extremes.n)
    ranges: dict[str, tuple[float, float]] = {}
    mine = []
    for group, kind, pos, score, key, owner in chosen:
        if owner == rank:
            image, amap, mask = extremes.payload(group, kind, key)
            mine.append((group, kind, pos, score, key, image, amap.astype(np.float32), mask))
    for group, lo, hi in [(m[0], float(m[6].min()), float(m[6].max())) for m in mine]:
        old = ranges.get(group, (lo, hi))
        ranges[group] = (min(old[0], lo), max(old[1], hi))
    shared: dict[str, tuple[float, float]] = {}
    for part in gather_objects(acc, ranges):  # one colour scale per group over all ranks
        for g, (lo, hi) in part.items():
            old = shared.get(g, (lo, hi))
            shared[g] = (min(old[0], lo), max(old[1], hi))
    rendered = [(g, kind, pos, score, key, visualize.encode_png(visualize.panel(image, amap, mask, *shared[g])))
                for g, kind, pos, score, key, image, amap, mask in mine]
    return [r for part in gather_objects(acc, rendered) for r in part]
