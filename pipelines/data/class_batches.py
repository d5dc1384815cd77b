"""Class-aware batches from a stream of labelled items: every batch holds c classes x >= K samples.

A loader worker feeds its items in stream order; ``ClassBatcher`` keeps them per class (encoded
bytes, so the buffer is cheap) and emits a batch as soon as ``c`` classes each hold their share. At
the end of the stream ``finish`` makes the batches still owed: class-aware where the buffer allows,
else "relaxed" (fewer classes, or a class with one sample), and "padded" with repeats of already
emitted items if corrupt samples left the worker short. Items left over are dropped (counted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchStats:
    relaxed: int = 0  # batches that are not c classes x >= K (tail of a stream)
    padded: int = 0  # repeated items standing in for missing ones
    dropped: int = 0  # items left in the buffer after the last batch (the epoch's remainder)


def batch_layout(global_batch: int, classes_per_batch: int, world: int, num_classes: int) -> list[int]:
    """Samples per class in one rank's batch, e.g. 16 / 8 classes / 2 ranks -> [2, 2, 2, 2].

    K = global_batch // classes_per_batch samples per class; a rank's batch of global_batch // world
    holds local_batch // K classes, or every class when fewer exist (then each gets more samples).
    """
    local = global_batch // world
    k = global_batch // classes_per_batch
    c = max(1, min(local // k, num_classes))
    return [local // c + (1 if i < local % c else 0) for i in range(c)]


@dataclass
class ClassBatcher:
    """Streaming class-aware batcher; ``rng`` (numpy Generator) picks among the eligible classes."""

    sizes: list[int]
    rng: Any
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self.buffer: dict[Hashable, list[Any]] = defaultdict(list)
        self.emitted: list[Any] = []  # last emitted batch: the source of padding
        self.leftover: list[Any] = []  # what ``finish`` dropped

    def add(self, item: Any, label: Hashable) -> list[Any] | None:
        """Buffer ``item``; return a class-aware batch of (item, label) when one is complete."""
        self.buffer[label].append(item)
        need = max(self.sizes)
        full = [c for c, items in self.buffer.items() if len(items) >= need]
        if len(full) < len(self.sizes):
            return None
        chosen = [full[i] for i in self.rng.permutation(len(full))[: len(self.sizes)]]
        return self._take(chosen, self.sizes)

    def finish(self, owed: int) -> list[list[Any]]:
        """The ``owed`` remaining batches from the buffer, then drop what is left."""
        out = [self._tail_batch() for _ in range(owed)]
        self.leftover = [item for items in self.buffer.values() for item in items]
        self.stats.dropped += len(self.leftover)
        self.buffer.clear()
        return out

    def _take(self, classes: list[Hashable], sizes: list[int]) -> list[Any]:
        batch = []
        for c, n in zip(classes, sizes):
            batch += [(item, c) for item in self.buffer[c][:n]]
            self.buffer[c] = self.buffer[c][n:]
            if not self.buffer[c]:
                del self.buffer[c]
        self.emitted = batch
        return batch

    def _tail_batch(self) -> list[Any]:
        """Largest classes first, so pairs survive; relaxed and padded only when the buffer forces it."""
        total = sum(self.sizes)
        order = sorted(self.buffer, key=lambda c: (-len(self.buffer[c]), str(c)))
        classes = order[: len(self.sizes)]
        sizes = [min(n, len(self.buffer[c])) for c, n in zip(classes, self.sizes)]
        for i, c in enumerate(classes):  # fill a short class from the same class first
            while sum(sizes) < total and sizes[i] < len(self.buffer[c]):
                sizes[i] += 1
        extra = [c for c in order[len(classes):]]
        batch = self._take(classes, sizes) if classes else []
        relaxed = len(classes) < len(self.sizes) or any(n < 2 for n in sizes)
        while len(batch) < total and extra:  # other classes' leftovers (each a class of its own)
            c = extra.pop(0)
            take = min(total - len(batch), len(self.buffer[c]))
            batch += [(item, c) for item in self.buffer[c][:take]]
            self.buffer[c] = self.buffer[c][take:]
            if not self.buffer[c]:
                del self.buffer[c]
            relaxed = True
        padding = self.emitted or batch
        missing = total - len(batch)
        if missing and padding:
            batch += [padding[i % len(padding)] for i in range(missing)]
            self.stats.padded += missing
        self.stats.relaxed += int(relaxed)
        self.emitted = batch
        return batch
