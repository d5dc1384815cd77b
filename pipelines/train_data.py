"""Training and validation input pipelines: planned segments -> samples -> class-aware batches.

Each loader worker reads its planned segment (``pipelines.data_plan``) with ``shard_format.reader``, shuffles
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

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ccl.data.transforms import augment_params, resize_image, to_uint8_tensor, train_views
from pipelines.class_batches import BatchStats, ClassBatcher, batch_layout
from pipelines.data_plan import Segment, exact_segments, train_segments
from pipelines.distributed import loader_worker_init
from shard_format.builds import ShardSet
from shard_format.errors import ERROR_KEY, LostSamples, ShardError
from shard_format.reader import iter_range
from shard_format.record import decode_record
from shard_format.schema import META_EXTENSION, class_key

log = logging.getLogger(__name__)
PSEUDO_DEFAULT = "pseudo_classes.json"
BATCH_COUNTS = ("relaxed", "padded", "dropped", "corrupt", "lost")  # per-batch data statistics (summed)


# ---------------------------------------------------------------- labels


@dataclass(frozen=True)
class Labels:
    """Sample -> contrastive class: the merged class index (raw) or a pseudo-label sidecar."""

    class_index: Mapping[str, int]
    pseudo: Mapping[str, int] | None = None
    num_classes: int = 0

    def of(self, sample: Mapping[str, Any]) -> int:
        if ERROR_KEY in sample:  # a member the reader refused
            raise ShardError(sample[ERROR_KEY])
        if self.pseudo is not None:
            key = sample["__key__"]
            if key not in self.pseudo:
                raise ShardError(f"{sample.get('__url__')}:{key}: no pseudo label for this sample")
            return self.pseudo[key]
        try:
            meta = json.loads(sample[META_EXTENSION])
            return self.class_index[class_key(meta["dataset"], meta["class_name"])]
        except (KeyError, ValueError, TypeError) as err:
            raise ShardError(f"{sample.get('__url__')}:{sample.get('__key__')}: no class ({err!r})") from None


def load_labels(shard_set: ShardSet, class_source: str, pseudo_file: str = "") -> Labels:
    """Labels for ``data.class_source`` (raw | pseudo); pseudo files are ``{"k", "labels": {key: id}}``."""
    if class_source == "raw":
        return Labels(dict(shard_set.class_index), None, train_class_count(shard_set))
    if class_source != "pseudo":
        raise ValueError(f"data.class_source must be raw or pseudo, got {class_source!r}")
    merged: dict[str, int] = {}
    k = 0
    for build in shard_set.builds:
        name = pseudo_file or PSEUDO_DEFAULT
        path = Path(name) if ("/" in name or Path(name).is_absolute()) else Path(build) / name
        if not path.is_file():
            raise ShardError(f"data.class_source=pseudo but {path} does not exist "
                             "(make it with shard_tools/pseudo_classes.py)")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ShardError(f"{path}: pseudo-class file is not valid JSON ({err})") from None
        if not isinstance(doc, dict) or "k" not in doc or "labels" not in doc:
            raise ShardError(f"{path}: expected {{'k': K, 'labels': {{key: id}}}}")
        k = max(k, int(doc["k"]))
        merged.update({str(key): int(v) for key, v in doc["labels"].items()})
    return Labels(dict(shard_set.class_index), merged, k)


def train_class_count(shard_set: ShardSet) -> int:
    """Classes with training samples (manifest counts), else the size of the class index."""
    names = {(m["dataset"], c) for m in shard_set.manifests for c in m.get("counts", {}).get("train", {})}
    return len(names) or shard_set.num_classes


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
        streams = [self._plan_rank_batches(pr, worker, plan[pr][worker]) for pr in range(s.rank * per, (s.rank + 1) * per)]
        for parts in zip(*streams):
            yield _concat(parts) if len(parts) > 1 else parts[0]

    def _plan_rank_batches(self, plan_rank: int, worker: int, segment: Segment) -> Iterator[dict[str, Any]]:
        s = self.spec
        rng = np.random.default_rng([s.seed, s.epoch, plan_rank, worker])
        batcher = ClassBatcher(list(s.layout), rng)
        skip = len(range(worker, s.skip_batches, s.workers))  # this worker's batches among the skipped
        made, corrupt, lost, dropped_keys = 0, 0, 0, []
        pending: list[Any] | None = None
        for sample in _shuffled(_read_segment(segment, self), s.shuffle_buffer, rng):
            if isinstance(sample, ShardError):  # a missing, truncated or corrupt shard: its lost samples count
                lost += lost_count(sample)
                continue
            try:
                label = s.labels.of(sample)
            except ShardError as err:
                log.warning("skipping sample: %s", err)
                corrupt += 1
                continue
            if made >= segment.batches:
                batcher.stats.dropped += 1
                dropped_keys.append(sample["__key__"])
                continue
            batch = batcher.add(sample, label)
            if batch is not None:
                made += 1
                if made == segment.batches:  # the last one waits for the stream's end (its stats)
                    pending = batch
                elif made > skip:
                    yield self._decode(batch, plan_rank, worker, made - 1, batcher.stats, corrupt, lost)
                    corrupt = lost = 0
        tail = batcher.finish(segment.batches - made)
        if pending is not None:
            tail, made = [pending], made - 1
        dropped_keys += [x["__key__"] for x in batcher.leftover]
        for batch in tail:
            made += 1
            if not batch:
                raise ShardError(f"plan rank {plan_rank} worker {worker}: no readable samples in {segment.ranges}")
            last = made == segment.batches
            if made > skip:
                yield self._decode(batch, plan_rank, worker, made - 1, batcher.stats, corrupt, lost,
                                   dropped_keys if (last and s.record_keys) else None)
            corrupt = lost = 0

    def _decode(self, batch: list[tuple[dict[str, Any], int]], plan_rank: int, worker: int, index: int,
                stats: BatchStats, corrupt: int, lost: int, dropped_keys: list[str] | None = None) -> dict[str, Any]:
        """Decode and augment a composed batch; a sample that does not decode is replaced by a same-class one."""
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
        for i, v in enumerate(views):
            if v is None:
                corrupt += 1
                same = [j for j in good if batch[j][1] == batch[i][1]]
                views[i] = views[(same or good)[0]]
        out_stats = {"relaxed": stats.relaxed, "padded": stats.padded, "dropped": stats.dropped, "corrupt": corrupt,
                     "lost": lost}
        stats.relaxed = stats.padded = stats.dropped = 0  # counters are per batch from here on
        if dropped_keys is not None:
            out_stats["dropped_keys"] = dropped_keys
        return {"image": to_uint8_tensor([v[0] for v in views]), "augmented": to_uint8_tensor([v[1] for v in views]),
                "label": torch.tensor([label for _, label in batch], dtype=torch.long),
                "keys": [v[2] for v in views], "stats": out_stats}


def lost_count(err: ShardError) -> int:
    """Planned samples a shard error cost (at least one)."""
    return max(1, err.lost or 0) if isinstance(err, LostSamples) else 1


def _read_segment(segment: Segment, stream: Any) -> Iterator[dict[str, Any] | ShardError]:
    """Samples of the segment's ranges; a broken shard yields its error (its lost samples are counted) and
    reading goes on."""
    for r in segment.ranges:
        try:
            yield from iter_range(r.url, r.start, r.stop)
        except ShardError as err:
            log.warning("skipping the rest of a shard: %s", err)
            yield err


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


# ---------------------------------------------------------------- validation stream


@dataclass(frozen=True)
class ExactSpec:
    shards: tuple[tuple[str, int], ...]
    world: int
    rank: int
    workers: int
    batch_size: int
    image_size: int
    class_index: Mapping[str, int]


class ExactStream(IterableDataset):
    """Every sample of the shards once over all ranks and workers: {"image" uint8, "label", "keys", "corrupt"}.

    ``label`` is the class in the merged index (-1 if absent): the colour of the class-separation plots.
    """

    def __init__(self, spec: ExactSpec) -> None:
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        worker = info.id if info is not None else 0
        segment = exact_segments(list(s.shards), s.world, s.workers)[s.rank][worker]
        images, labels, keys, corrupt = [], [], [], 0
        for sample in _read_segment(segment, self):
            if isinstance(sample, ShardError):
                corrupt += lost_count(sample)
                continue
            try:
                record = decode_record(sample)
                images.append(resize_image(record.image, s.image_size))
                labels.append(s.class_index.get(record.meta.class_key, -1))
                keys.append(record.key)
            except ShardError as err:
                log.warning("skipping sample: %s", err)
                corrupt += 1
            if len(images) == s.batch_size:
                yield _exact_batch(images, labels, keys, corrupt)
                images, labels, keys, corrupt = [], [], [], 0
        if images or corrupt:
            yield _exact_batch(images, labels, keys, corrupt)


def _exact_batch(images: list[np.ndarray], labels: list[int], keys: list[str], corrupt: int) -> dict[str, Any]:
    return {"image": to_uint8_tensor(images) if images else None,
            "label": torch.tensor(labels, dtype=torch.long), "keys": keys, "corrupt": corrupt}


# ---------------------------------------------------------------- loaders


def make_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """batch_size=None: the datasets yield whole batches; workers keep the DataLoader's round-robin order."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=loader_worker_init)


# ---------------------------------------------------------------- from the config


def shard_list(shard_set: ShardSet, split: str) -> tuple[tuple[str, int], ...]:
    return tuple((s.url, s.samples) for s in shard_set.shards(split))


def plan_ranks(cfg: Any, world: int) -> int:
    return cfg.data.plan_ranks or world


def train_layout(cfg: Any, labels: Labels, world: int) -> tuple[int, ...]:
    d = cfg.data
    return tuple(batch_layout(d.batch_size, d.classes_per_batch, plan_ranks(cfg, world), labels.num_classes))


def train_loader(cfg: Any, shard_set: ShardSet, labels: Labels, rank: int, world: int, epoch: int,
                 skip_batches: int = 0, pin_memory: bool = False) -> DataLoader:
    """This rank's loader for one epoch (a fresh one per epoch: the plan depends on the epoch)."""
    d = cfg.data
    workers = max(1, d.num_workers)
    spec = StreamSpec(shard_list(shard_set, "train"), d.batch_size, train_layout(cfg, labels, world),
                      plan_ranks(cfg, world), world, rank, workers, cfg.run.seed, epoch, d.image_size,
                      augment_params(**asdict(d.augment)), labels, d.shuffle_buffer, skip_batches)
    return make_loader(TrainStream(spec), d.num_workers, pin_memory)


def exact_loader(cfg: Any, shard_set: ShardSet, split: str, rank: int, world: int, pin_memory: bool = False) -> DataLoader:
    """Every sample of ``split`` once over all ranks (validation)."""
    workers = max(1, cfg.data.num_workers)
    spec = ExactSpec(shard_list(shard_set, split), world, rank, workers, cfg.eval.batch_size, cfg.data.image_size,
                     dict(shard_set.class_index))
    return make_loader(ExactStream(spec), cfg.data.num_workers, pin_memory)


def first_samples(shard_set: ShardSet, split: str, n: int, size: int) -> tuple[torch.Tensor | None, list[str]]:
    """The first ``n`` decodable samples of ``split`` (the fixed images of the heatmap panel)."""
    images, keys = [], []
    for url, _ in shard_list(shard_set, split):
        for sample in iter_range(url, 0, None):
            if len(images) >= n:
                break
            try:
                images.append(resize_image(decode_record(sample).image, size))
                keys.append(sample["__key__"])
            except ShardError:
                continue
        if len(images) >= n:
            break
    return (to_uint8_tensor(images) if images else None), keys


def epoch_steps(cfg: Any, shard_set: ShardSet) -> int:
    """Loader batches per epoch on every rank."""
    return shard_set.count("train") // cfg.data.batch_size
