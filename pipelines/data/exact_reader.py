"""The exactly-once reader: every sample of a split scored once over ranks x loader workers.

Training validation and test evaluation both read through ``ExactReader``. The split's shards (in
manifest order, optionally cut to the first ``max_images`` samples) form one sequence that
``data_plan.exact_segments`` cuts into ``ranks x workers`` near-equal contiguous ranges at sample
level: no padding, no drops, whatever the numbers of shards, ranks and workers (a shard may be
shared by two workers; a slot may be empty when there are fewer samples than slots). Each worker
decodes its range into ``ExactBatch`` batches of up to ``batch_size`` samples.

A sample that does not decode, and the samples of a shard that is missing or turns out truncated,
are not in a batch: their messages are in ``ExactBatch.errors`` and the planned samples they cost in
``ExactBatch.lost``; the caller reports them (the evaluator then compares the samples scored with
the manifests' count). Each rank builds its own loader, so it must NOT go through
``accelerator.prepare`` (that would split the data a second time).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ccl.data.image_ops import resize_image, resize_mask
from ccl.data.transforms import to_uint8_tensor
from pipelines.base.distributed import make_loader
from pipelines.data.data_plan import Segment, exact_segments
from shard_format.builds import ShardSet
from shard_format.errors import ShardError, lost_count
from shard_format.fetch import ShardOpener
from shard_format.reader import iter_range, read_ranges
from shard_format.record import Record, decode_record


def group_name(dataset: str, group: str) -> str:
    """Metric group of a record: its RecordMeta.group prefixed with the dataset ("mvtec/bottle")."""
    return f"{dataset}/{group}"


@dataclass
class ExactBatch:
    """Up to ``batch_size`` decoded samples of one worker, and what its range lost since the last batch."""

    images: torch.Tensor | None  # (B, 3, S, S) uint8 RGB, resized; None when B = 0
    masks: torch.Tensor | None  # (B, S, S) bool, all False for a normal sample; None when B = 0
    has_mask: torch.Tensor  # (B,) bool: pixel ground truth exists (an anomalous sample may have none)
    labels: torch.Tensor  # (B,) long: 0 normal, 1 anomalous
    classes: torch.Tensor  # (B,) long: class id in the merged class index, -1 if absent
    groups: list[str]  # metric group of each sample ("dataset/group")
    keys: list[str]
    errors: list[str] = field(default_factory=list)  # samples not delivered: why
    lost: int = 0  # planned samples those errors cost

    @property
    def size(self) -> int:
        return len(self.keys)


class _Batching:
    """The batch being filled by one worker."""

    def __init__(self, image_size: int, class_index: Mapping[str, int]) -> None:
        self.image_size, self.class_index = image_size, class_index
        self.reset()

    def reset(self) -> None:
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.has_mask: list[bool] = []
        self.labels: list[int] = []
        self.classes: list[int] = []
        self.groups: list[str] = []
        self.keys: list[str] = []
        self.errors: list[str] = []
        self.lost = 0

    def add(self, record: Record) -> None:
        size, meta = self.image_size, record.meta
        self.images.append(resize_image(record.image, size))
        self.has_mask.append(record.mask is not None or meta.label == 0)  # a normal sample's pixels are all normal
        self.masks.append(resize_mask(record.mask, size) if record.mask is not None else np.zeros((size, size), bool))
        self.labels.append(meta.label)
        self.classes.append(self.class_index.get(meta.class_key, -1))
        self.groups.append(group_name(meta.dataset, meta.group))
        self.keys.append(record.key)

    def error(self, message: str, lost: int) -> None:
        self.errors.append(message)
        self.lost += lost

    def take(self) -> ExactBatch:
        batch = ExactBatch(
            images=to_uint8_tensor(self.images) if self.images else None,
            masks=torch.from_numpy(np.stack(self.masks)) if self.masks else None,
            has_mask=torch.tensor(self.has_mask, dtype=torch.bool), labels=torch.tensor(self.labels, dtype=torch.long),
            classes=torch.tensor(self.classes, dtype=torch.long), groups=self.groups, keys=self.keys,
            errors=self.errors, lost=self.lost)
        self.reset()
        return batch


class ExactReader(IterableDataset):
    """The batches of one rank; DataLoader worker i reads the rank's segments i, i + W, ... of the plan."""

    def __init__(self, segments: Sequence[Segment], batch_size: int, image_size: int,
                 class_index: Mapping[str, int], classes: tuple[str, ...] = (), split: str | None = None,
                 opener: ShardOpener | None = None) -> None:
        self.segments, self.batch_size, self.image_size = list(segments), batch_size, image_size
        self.opener = opener or ShardOpener()  # remote shards: fetched and checked before they are read
        self.split = split  # the shards' split: a record of another split, or not shaped as verify wants, is refused
        self.class_index = dict(class_index)
        self.prefixes = tuple(f"{c}/" for c in classes)  # keys start with "dataset/class/"

    def __iter__(self) -> Iterator[ExactBatch]:
        info = get_worker_info()
        mine = self.segments if info is None else self.segments[info.id::info.num_workers]
        batch = _Batching(self.image_size, self.class_index)
        seen: set[str] = set()  # a key twice would be scored twice (and counted against the manifest)
        for segment in mine:
            for sample in read_ranges(segment.ranges, self.opener):
                if isinstance(sample, ShardError):  # a missing or truncated shard: the rest of its range is lost
                    batch.error(str(sample), lost_count(sample))
                    continue
                if self.prefixes and not str(sample.get("__key__", "")).startswith(self.prefixes):
                    continue  # another class (decided from the key, before decoding)
                key = str(sample.get("__key__", ""))
                try:
                    if key in seen:
                        raise ShardError(f"{sample.get('__url__')}:{key}: duplicate key (refused: scored once)")
                    seen.add(key)
                    batch.add(decode_record(sample, self.split))
                except ShardError as err:
                    batch.error(str(err), 1)
                if len(batch.keys) == self.batch_size:
                    yield batch.take()
        if batch.keys or batch.errors:
            yield batch.take()


def exact_plan(shard_set: ShardSet, split: str, ranks: int, workers: int, max_images: int = 0) -> list[list[Segment]]:
    """``plan[rank][worker]``: the contiguous sample ranges each loader worker reads."""
    shards = list(shard_set.sizes(split))
    if not shards:
        raise ShardError(f"no {split} shards in {', '.join(shard_set.builds)}")
    if max_images <= 0:
        return exact_segments(shards, ranks, workers)
    cut, left = [], max_images
    for url, n in shards:
        cut.append((url, min(n, left)))
        left -= cut[-1][1]
    shortened = {url for (url, n), (_, kept) in zip(shards, cut) if kept < n}
    plan = exact_segments([s for s in cut if s[1] > 0], ranks, workers)
    # A shard cut short by max_images does not end where its range does: nothing to check after it.
    return [[replace(seg, ranges=tuple(replace(r, total=-1) if r.url in shortened else r for r in seg.ranges))
             for seg in rank] for rank in plan]


def exact_loader(shard_set: ShardSet, split: str, image_size: int, batch_size: int, num_workers: int,
                 rank: int = 0, world: int = 1, max_images: int = 0, classes: tuple[str, ...] = ()) -> DataLoader:
    """This rank's loader of ``split`` (not to be prepared by Accelerate); ``classes`` keeps only those classes."""
    plan = exact_plan(shard_set, split, world, max(1, num_workers), max_images)
    reader = ExactReader(plan[rank], batch_size, image_size, shard_set.class_index, tuple(classes), split,
                         shard_set.opener())
    return make_loader(reader, num_workers)


def first_samples(shard_set: ShardSet, split: str, n: int,
                  size: int) -> tuple[torch.Tensor | None, list[str], torch.Tensor]:
    """The first ``n`` decodable samples of ``split``, resized (the fixed images of the heatmap panel): images,
    keys and class ids (B,) in the merged class index."""
    images, keys, classes, opener = [], [], [], shard_set.opener()
    for url, _ in shard_set.sizes(split):
        for sample in iter_range(url, 0, None, opener=opener):
            if len(images) >= n:
                break
            try:
                record = decode_record(sample)
                images.append(resize_image(record.image, size))
                keys.append(sample["__key__"])
                classes.append(shard_set.class_index.get(record.meta.class_key, -1))
            except ShardError:
                continue
        if len(images) >= n:
            break
    return (to_uint8_tensor(images) if images else None), keys, torch.tensor(classes, dtype=torch.long)
