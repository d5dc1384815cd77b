"""The per-epoch data plan: which samples each (rank, worker) reads and how many batches it makes.

Computed identically on every rank from the manifests' sample counts, the seed and the epoch; no
communication. For training:

- the shards are put in a seeded per-epoch order and concatenated into one sequence of N samples;
- the epoch has ``steps = N // global_batch`` steps on every rank (equal, whatever the shards);
- the sequence is cut into ``ranks x workers`` contiguous segments (sample-level cuts, so a shard
  may be shared by two workers), sized to the batches each worker owes plus an equal share of the
  remainder ``N - steps * global_batch``; every sample is read once per epoch;
- a worker's remainder share is what its class-aware batcher may leave out (at most one global
  batch per epoch in total); the shard order and the cut points move each epoch, so different
  samples are left out each time.

For evaluation-like passes (validation) ``exact_segments`` cuts the sequence into near-equal
segments with no remainder: every sample once, batches may differ per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Range:
    url: str
    start: int  # first sample index inside the shard
    stop: int  # one past the last
    total: int = -1  # the shard's sample count in its manifest: a range that ends there checks nothing follows


@dataclass(frozen=True)
class Segment:
    ranges: tuple[Range, ...]
    batches: int  # batches this worker must yield (0 for exact segments)

    @property
    def samples(self) -> int:
        return sum(r.stop - r.start for r in self.ranges)


def steps_per_epoch(total_samples: int, global_batch: int) -> int:
    return total_samples // global_batch


def epoch_order(shards: list[tuple[str, int]], seed: int, epoch: int) -> list[tuple[str, int]]:
    """The epoch's shard order (seeded permutation)."""
    perm = np.random.default_rng([seed, epoch, 7]).permutation(len(shards))
    return [shards[i] for i in perm]


def train_segments(shards: list[tuple[str, int]], ranks: int, workers: int, global_batch: int,
                   seed: int, epoch: int) -> list[list[Segment]]:
    """``segments[rank][worker]`` for one training epoch (see the module docstring)."""
    order = epoch_order(shards, seed, epoch)
    total = sum(n for _, n in order)
    steps = steps_per_epoch(total, global_batch)
    local = global_batch // ranks
    slots = ranks * workers
    remainder = total - steps * global_batch
    sizes, owed = [], []
    for slot in range(slots):
        rank, worker = divmod(slot, workers)
        batches = len(range(worker, steps, workers))  # the DataLoader takes batch t from worker t % workers
        owed.append(batches)
        sizes.append(batches * local + remainder // slots + (1 if slot < remainder % slots else 0))
    cut = _cut(order, sizes)
    return [[Segment(cut[r * workers + w], owed[r * workers + w]) for w in range(workers)] for r in range(ranks)]


def exact_segments(shards: list[tuple[str, int]], ranks: int, workers: int) -> list[list[Segment]]:
    """Near-equal segments covering every sample once (shard order fixed)."""
    total = sum(n for _, n in shards)
    slots = ranks * workers
    sizes = [total // slots + (1 if s < total % slots else 0) for s in range(slots)]
    cut = _cut(shards, sizes)
    return [[Segment(cut[r * workers + w], 0) for w in range(workers)] for r in range(ranks)]


def _cut(order: list[tuple[str, int]], sizes: list[int]) -> list[tuple[Range, ...]]:
    """Consecutive pieces of the concatenated shards with the given sample counts."""
    out: list[tuple[Range, ...]] = []
    shard, offset = 0, 0
    for size in sizes:
        ranges = []
        while size > 0:
            url, n = order[shard]
            take = min(size, n - offset)
            if take > 0:
                ranges.append(Range(url, offset, offset + take, n))
            size -= take
            offset += take
            if offset >= n:
                shard, offset = shard + 1, 0
        out.append(tuple(ranges))
    return out
