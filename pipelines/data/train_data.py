"""The training input pipeline: planned segments -> samples -> class-aware batches.

Each loader worker reads its planned segment (``pipelines.data.data_plan``) with ``shard_format.reader``, shuffles
encoded samples in a small buffer, labels them (class index or pseudo labels), forms class-aware
batches (``class_batches``) and decodes only the batches it yields into uint8 views. Batches are
whole local batches, so the DataLoader runs with ``batch_size=None``; it is never passed through
``accelerator.prepare`` (that would split the data a second time).

Determinism: every random choice comes from a numpy Generator seeded by (seed, epoch, plan rank,
worker[, batch]), so a run is reproducible and a resumed epoch can skip its first batches without
decoding them. ``plan_ranks`` (default: the world size) fixes the plan's number of ranks; a real rank
serves ``plan_ranks / world`` plan ranks and concatenates their batches, which gives the same global
batches on any world size that divides it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ccl.data.transforms import augment_params, to_uint8_tensor, train_views
from pipelines.base.distributed import make_loader
from pipelines.data.class_batches import ClassBatcher, batch_layout
from pipelines.data.data_plan import Segment, train_segments
from pipelines.data.labels import Labels, train_class_count
from pipelines.data.train_classes import replay_batch
from shard_format.builds import ShardSet
from shard_format.errors import ShardError, lost_count
from shard_format.fetch import ShardOpener
from shard_format.reader import read_ranges
from shard_format.record import decode_record

log = logging.getLogger(__name__)
BATCH_COUNTS = ("relaxed", "padded", "dropped", "corrupt", "lost")  # per-batch data statistics (summed)


# ---------------------------------------------------------------- training stream


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to compute and read its part of one epoch."""

    shards: tuple[tuple[str, int], ...]
    global_batch: int
    layout: tuple[int, ...]  # samples per class in one plan rank's batch
    plan_ranks: int
    world: int
    rank: int
    workers: int
    seed: int
    epoch: int
    image_size: int
    augment: Mapping[str, Any]
    labels: Labels
    shuffle_buffer: int = 64
    skip_batches: int = 0  # batches of this epoch already trained (resume mid-epoch)
    record_keys: bool = False  # attach dropped keys to the stats (tests of exactly-once)
    opener: ShardOpener = field(default_factory=ShardOpener)  # remote shards: fetched and checked first


class TrainStream(IterableDataset):
    """Yields this rank's batches: {"image", "augmented" (B,3,S,S) uint8, "label", "keys", "stats"}."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        # The DataLoader takes batch j from its worker j % W; after skipping k batches (resume) batch j is
        # the rank's batch k + j, so DataLoader worker i plays plan worker (i + k) % W.
        worker = ((info.id if info is not None else 0) + s.skip_batches) % s.workers
        plan = train_segments(list(s.shards), s.plan_ranks, s.workers, s.global_batch, s.seed, s.epoch)
        per = s.plan_ranks // s.world
        streams = [self._plan_rank_batches(pr, worker, plan[pr][worker])
                   for pr in range(s.rank * per, (s.rank + 1) * per)]
        for parts in zip(*streams, strict=True):  # every plan rank's worker owes the same number of batches
            yield _concat(parts) if len(parts) > 1 else parts[0]

    def _plan_rank_batches(self, plan_rank: int, worker: int, segment: Segment) -> Iterator[dict[str, Any]]:
        """The batches this plan rank's worker owes, less the first ones a resumed epoch skips, decoded.

        A skipped batch is composed all the same (the random choices of the later ones depend on it)
        but not decoded; its counts go to the next batch yielded, except the unreadable and lost
        samples counted at a batch of the tail, which are dropped with it.
        """
        s = self.spec
        rng = np.random.default_rng([s.seed, s.epoch, plan_rank, worker])
        skip = len(range(worker, s.skip_batches, s.workers))  # this worker's batches among the skipped
        carried: dict[str, Any] = dict.fromkeys(BATCH_COUNTS, 0)
        for index, (batch, counts, in_tail) in enumerate(self._compose(plan_rank, worker, segment, rng)):
            for key, value in counts.items():
                carried[key] = value if key == "dropped_keys" else carried[key] + value
            if index >= skip:
                yield self._decode(batch, plan_rank, worker, index, carried)
                carried = dict.fromkeys(BATCH_COUNTS, 0)
            elif in_tail:
                carried["corrupt"] = carried["lost"] = 0

    def _compose(self, plan_rank: int, worker: int, segment: Segment,
                 rng: np.random.Generator) -> Iterator[tuple[list[tuple[dict[str, Any], int]], dict[str, Any], bool]]:
        """The ``segment.batches`` class-aware batches of the segment's shuffled samples, in order, each with
        the counts since the previous one (``BATCH_COUNTS``; the last also its ``dropped_keys`` when the
        spec records keys) and whether it comes from the tail (composed after the stream ended).

        Samples after the last owed batch are dropped; the last batch is held back until the stream has
        ended, so that its counts include them (it then counts as a tail batch).
        """
        s = self.spec
        batcher = ClassBatcher(list(s.layout), rng)
        unreadable = {"corrupt": 0, "lost": 0}
        dropped_keys: list[str] = []

        def counts() -> dict[str, Any]:
            out = {"relaxed": batcher.stats.relaxed, "padded": batcher.stats.padded,
                   "dropped": batcher.stats.dropped, **unreadable}
            batcher.stats.relaxed = batcher.stats.padded = batcher.stats.dropped = 0
            unreadable.update(corrupt=0, lost=0)
            return out

        made, held = 0, None
        for sample in _shuffled(read_ranges(segment.ranges, s.opener), s.shuffle_buffer, rng):
            if isinstance(sample, ShardError):  # a missing, truncated or corrupt shard: its lost samples count
                log.warning("skipping the rest of a shard: %s", sample)
                unreadable["lost"] += lost_count(sample)
                continue
            try:
                label = s.labels.of(sample)
            except ShardError as err:
                log.warning("skipping sample: %s", err)
                unreadable["corrupt"] += 1
                continue
            if made >= segment.batches:
                batcher.stats.dropped += 1
                dropped_keys.append(sample["__key__"])
                continue
            batch = batcher.add(sample, label)
            if batch is None:
                continue
            made += 1
            if made == segment.batches:
                held = batch
            else:
                yield batch, counts(), False
        tail = batcher.finish(segment.batches - made)
        if held is not None:
            tail = [held]
        dropped_keys += [x["__key__"] for x in batcher.leftover]
        for i, batch in enumerate(tail):
            if not batch:
                raise ShardError(f"plan rank {plan_rank} worker {worker}: no readable samples in {segment.ranges}")
            out = counts()
            if i == len(tail) - 1 and s.record_keys:
                out["dropped_keys"] = dropped_keys
            yield batch, out, True

    def _decode(self, batch: list[tuple[dict[str, Any], int]], plan_rank: int, worker: int, index: int,
                counts: dict[str, Any]) -> dict[str, Any]:
        """Decode and augment a composed batch; a sample that does not decode is replaced by a same-class one
        (and counted as corrupt in the batch's ``stats``)."""
        s = self.spec
        rng = np.random.default_rng([s.seed, s.epoch, plan_rank, worker, index, 1])
        views: list[tuple[np.ndarray, np.ndarray, str] | None] = []
        for sample, _ in batch:
            try:
                views.append(train_views(decode_record(sample).image, s.image_size, rng, **s.augment)
                             + (sample["__key__"],))
            except ShardError as err:
                log.warning("skipping sample: %s", err)
                views.append(None)
        good = [i for i, v in enumerate(views) if v is not None]
        if not good:
            raise ShardError(f"no sample of a batch decodes (first key {batch[0][0]['__key__']})")
        corrupt = counts["corrupt"]
        for i, v in enumerate(views):
            if v is None:
                corrupt += 1
                same = [j for j in good if batch[j][1] == batch[i][1]]
                views[i] = views[(same or good)[0]]
        out_stats = {**counts, "corrupt": corrupt}
        return {"image": to_uint8_tensor([v[0] for v in views]), "augmented": to_uint8_tensor([v[1] for v in views]),
                "label": torch.tensor([label for _, label in batch], dtype=torch.long),
                "keys": [v[2] for v in views], "stats": out_stats}


class ReplayMix(IterableDataset):
    """Continual training: every batch of ``current`` followed by a batch of the replay stream, concatenated.

    The replay stream is a ``TrainStream`` over the replayed classes' builds with its own share of the batch;
    it is walked again (another seeded order each time) whenever the current epoch needs more of it. A resumed
    epoch draws its replay batches afresh: replay is a sampler, not a sequence to continue.
    """

    def __init__(self, current: TrainStream, replay: StreamSpec) -> None:
        self.current, self.replay = current, replay

    def __iter__(self) -> Iterator[dict[str, Any]]:
        replay = self._replay_batches()
        for batch in self.current:
            yield _concat((batch, next(replay)))

    def _replay_batches(self) -> Iterator[dict[str, Any]]:
        for cycle in itertools.count():
            # Another seed than the current stream's, and another order at every pass over the replay data.
            spec = replace(self.replay, seed=self.replay.seed + 1_000_003, epoch=self.replay.epoch * 1000 + cycle)
            produced = 0
            for batch in TrainStream(spec):
                produced += 1
                yield batch
            if not produced:
                raise ShardError("the replay classes gave no batch (fewer samples than loader workers x batch)")


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle buffer over encoded samples (memory: ``size`` encoded images)."""
    buffer: list[Any] = []
    for item in items:
        if size <= 1:
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    order = rng.permutation(len(buffer)) if buffer else []
    for i in order:
        yield buffer[i]


def _concat(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    stats = {k: sum(p["stats"].get(k, 0) for p in parts) for k in BATCH_COUNTS}
    if any("dropped_keys" in p["stats"] for p in parts):
        stats["dropped_keys"] = [k for p in parts for k in p["stats"].get("dropped_keys", [])]
    return {"image": torch.cat([p["image"] for p in parts]), "augmented": torch.cat([p["augmented"] for p in parts]),
            "label": torch.cat([p["label"] for p in parts]), "keys": [k for p in parts for k in p["keys"]],
            "stats": stats}


# ---------------------------------------------------------------- from the config


def plan_ranks(cfg: Any, world: int) -> int:
    return cfg.data.plan_ranks or world


def layout(cfg: Any, global_batch: int, shard_set: ShardSet, world: int) -> tuple[int, ...]:
    """Samples per class in one plan rank's share of ``global_batch`` (K = data.batch_size / classes_per_batch
    samples per class, whatever part of the batch this is), over the classes ``shard_set`` trains."""
    k = cfg.data.batch_size // cfg.data.classes_per_batch
    return tuple(batch_layout(global_batch, max(1, global_batch // k), plan_ranks(cfg, world),
                              train_class_count(shard_set)))


def train_loader(cfg: Any, shard_set: ShardSet, labels: Labels, rank: int, world: int, epoch: int,
                 skip_batches: int = 0, pin_memory: bool = False, replay: ShardSet | None = None) -> DataLoader:
    """This rank's loader for one epoch (a fresh one per epoch: the plan depends on the epoch). With ``replay``
    (continual training), ``data.replay_fraction`` of every batch comes from its training samples."""
    d = cfg.data
    workers = max(1, d.num_workers)
    current = d.batch_size - (replay_batch(cfg) if replay is not None else 0)
    spec = StreamSpec(shard_set.sizes("train"), current, layout(cfg, current, shard_set, world),
                      plan_ranks(cfg, world), world, rank, workers, cfg.run.seed, epoch, d.image_size,
                      augment_params(**asdict(d.augment)), labels, d.shuffle_buffer, skip_batches,
                      opener=shard_set.opener())
    stream: IterableDataset = TrainStream(spec)
    if replay is not None:
        replayed = d.batch_size - current
        stream = ReplayMix(stream, replace(spec, shards=replay.sizes("train"), global_batch=replayed,
                                           layout=layout(cfg, replayed, replay, world), skip_batches=0,
                                           opener=replay.opener()))
    return make_loader(stream, d.num_workers, pin_memory)


def epoch_steps(cfg: Any, shard_set: ShardSet) -> int:
    """Loader batches per epoch on every rank: the samples of ``shard_set`` (the current classes) over the part
    of the batch they fill."""
    replayed = replay_batch(cfg) if cfg.data.replay_classes else 0
    return shard_set.count("train") // (cfg.data.batch_size - replayed)
