"""The training input pipeline: exactly-once plan, equal steps, class-aware batches, faults, resume skip."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.base.distributed import make_loader
from pipelines.data.class_batches import ClassBatcher, batch_layout
from pipelines.data.data_plan import exact_segments, train_segments
from pipelines.data.labels import load_labels
from pipelines.data.train_data import StreamSpec, TrainStream
from shard_format.builds import open_builds
from tests.pipelines.train_fixtures import keys_of, write_build

UNEVEN = [23, 7, 41, 3, 30]  # 5 shards, 104 samples


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_build(tmp_path_factory.mktemp("uneven"), "toy", ["a", "b", "c", "d", "e"], UNEVEN, size=16)


def _spec(build: Path, rank: int, world: int, workers: int, epoch: int = 0, batch: int = 8, plan_ranks: int = 0,
          skip: int = 0, **kw) -> StreamSpec:
    shard_set = open_builds([build])
    labels = load_labels(shard_set, "raw")
    ranks = plan_ranks or world
    layout = tuple(batch_layout(batch, 4, ranks, labels.num_classes))
    return StreamSpec(shard_set.sizes("train"), batch, layout, ranks, world, rank, workers, 0, epoch, 16,
                      {}, labels, 8, skip, record_keys=True, **kw)


def _run_rank(spec: StreamSpec, num_workers: int) -> list[dict]:
    return list(make_loader(TrainStream(spec), num_workers))


# ---------------------------------------------------------------- the plan (pure)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_plan_covers_every_sample_once_with_equal_steps(epoch: int) -> None:
    shards = [(f"s{i}", n) for i, n in enumerate(UNEVEN)]
    plan = train_segments(shards, ranks=2, workers=2, global_batch=8, seed=0, epoch=epoch)
    seen = Counter((r.url, i) for rank in plan for seg in rank for r in seg.ranges for i in range(r.start, r.stop))
    assert sorted(seen) == sorted((u, i) for u, n in shards for i in range(n)) and set(seen.values()) == {1}
    steps = sum(UNEVEN) // 8
    assert [sum(seg.batches for seg in rank) for rank in plan] == [steps, steps]
    for rank in plan:
        assert all(seg.samples >= seg.batches * 4 for seg in rank)  # enough for the owed local batches


def test_plan_changes_with_the_epoch_and_exact_segments_are_near_equal() -> None:
    shards = [(f"s{i}", n) for i, n in enumerate(UNEVEN)]
    a = train_segments(shards, 2, 2, 8, 0, 0)
    b = train_segments(shards, 2, 2, 8, 0, 1)
    assert a != b
    sizes = [seg.samples for rank in exact_segments(shards, 3, 2) for seg in rank]
    assert sum(sizes) == sum(UNEVEN) and max(sizes) - min(sizes) <= 1


def test_batch_layout() -> None:
    assert batch_layout(16, 8, 1, 15) == [2] * 8
    assert batch_layout(16, 8, 2, 15) == [2] * 4
    assert batch_layout(16, 8, 1, 3) == [6, 5, 5]  # fewer classes than P: all classes, more samples each
    assert batch_layout(16, 8, 8, 30) == [2]


def test_batcher_emits_class_aware_batches_and_relaxes_only_at_the_tail() -> None:
    rng = np.random.default_rng(0)
    batcher = ClassBatcher([2, 2], rng)
    labels = [0, 1, 2, 0, 1, 2, 3, 3, 0, 1, 4]
    out = [b for i, c in enumerate(labels) if (b := batcher.add(i, c)) is not None]
    for b in out:
        assert sorted(Counter(c for _, c in b).values()) == [2, 2]
    assert len(out) == 2  # 0,1 then 2,3 complete; 8 (a), 9 (b), 10 (e) wait in the buffer
    tail = batcher.finish(1)  # owed one more batch but only 3 items left: relaxed and padded
    assert len(tail[0]) == 4 and Counter(i for i, _ in tail[0][:3]) == Counter([8, 9, 10])
    assert (batcher.stats.relaxed, batcher.stats.padded, batcher.stats.dropped) == (1, 1, 0)
    batcher = ClassBatcher([2, 2], rng)
    for i, c in enumerate([0, 0, 1, 2, 2, 3]):
        assert batcher.add(i, c) is None or i == 4
    assert batcher.finish(0) == [] and batcher.stats.dropped == 2  # the remainder is dropped, counted


# ---------------------------------------------------------------- real loaders


def test_two_ranks_two_workers_read_every_sample_once_with_equal_steps(build: Path) -> None:
    """2 ranks x 2 workers over 5 uneven shards: each sample once per epoch (trained or dropped)."""
    all_keys = keys_of(build)
    for epoch in (0, 1):
        per_rank = [_run_rank(_spec(build, rank, 2, 2, epoch), 2) for rank in range(2)]
        assert [len(b) for b in per_rank] == [len(all_keys) // 8] * 2  # equal steps per rank
        trained = [k for batches in per_rank for b in batches for k in b["keys"]]
        dropped = [k for batches in per_rank for b in batches for k in b["stats"].get("dropped_keys", [])]
        assert sorted(trained + dropped) == sorted(all_keys)  # exactly once
        assert len(dropped) == len(all_keys) % 8
        batches = [b for batches in per_rank for b in batches]
        aware = [b for b in batches if sorted(Counter(b["label"].tolist()).values()) == [2, 2]]
        relaxed = sum(b["stats"]["relaxed"] for b in batches)
        assert len(aware) + relaxed == len(batches) and relaxed <= 4  # only worker tails may relax
        assert all(b["image"].shape == (4, 3, 16, 16) and b["augmented"].shape == (4, 3, 16, 16) for b in batches)


def test_plan_ranks_give_the_same_global_batches_on_one_process(build: Path) -> None:
    two = [_run_rank(_spec(build, rank, 2, 1), 0) for rank in range(2)]
    one = _run_rank(_spec(build, 0, 1, 1, plan_ranks=2), 0)
    assert len(one) == len(two[0])
    for step, batch in enumerate(one):
        assert batch["keys"] == two[0][step]["keys"] + two[1][step]["keys"]
        assert np.array_equal(batch["augmented"].numpy(), np.concatenate([two[0][step]["augmented"],
                                                                          two[1][step]["augmented"]]))


def test_resume_skips_batches_without_changing_the_rest(build: Path) -> None:
    full = _run_rank(_spec(build, 0, 1, 2, epoch=3), 2)
    resumed = _run_rank(_spec(build, 0, 1, 2, epoch=3, skip=5), 2)
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed, strict=True):
        assert a["keys"] == b["keys"] and np.array_equal(a["augmented"].numpy(), b["augmented"].numpy())


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(tmp_path: Path) -> None:
    build = write_build(tmp_path, "toy", ["a", "b"], [20, 20], size=16)
    _corrupt_first_image(build / "train-000000.tar")
    data = (build / "train-000001.tar").read_bytes()
    (build / "train-000001.tar").write_bytes(data[: len(data) // 2])  # truncated mid-shard
    spec = _spec(build, 0, 1, 1, batch=4)
    batches = _run_rank(spec, 0)
    assert len(batches) == 40 // 4  # the step count stays fixed
    corrupt, lost = (sum(b["stats"][k] for b in batches) for k in ("corrupt", "lost"))
    delivered = {k for b in batches for k in b["keys"]}
    # Every planned sample is delivered, unreadable (counted once) or lost with the truncated shard's tail:
    # tarfile reads a cut shard as a short one, the reader counts what the plan misses.
    assert len(delivered) + corrupt + lost == 40
    assert corrupt >= 1 and lost >= 5  # not "one corrupt item" for the whole lost tail
    assert sum(b["stats"]["padded"] for b in batches) > 0  # the lost half shard is made up by repeats
    assert all(len(b["keys"]) == 4 for b in batches)


def _corrupt_first_image(path: Path) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (m, data) in enumerate(members):
            data = b"not a png" if i == 0 else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def test_pseudo_labels_come_from_the_sidecar(tmp_path: Path) -> None:
    build = write_build(tmp_path, "toy", ["a", "b", "c", "d"], [24], size=16)
    keys = keys_of(build)
    (build / "pseudo_classes.json").write_text(json.dumps({"k": 2, "labels": {k: i % 2 for i, k in enumerate(keys)}}))
    labels = load_labels(open_builds([build]), "pseudo")
    assert labels.num_classes == 2
    spec = StreamSpec(open_builds([build]).sizes("train"), 8, (4, 4), 1, 1, 0, 1, 0, 0, 16, {}, labels, 4)
    for batch in _run_rank(spec, 0):
        expected = [keys.index(k) % 2 for k in batch["keys"]]
        assert batch["label"].tolist() == expected
