"""The exactly-once reader behind validation and evaluation: every sample once, typed batches, losses counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ccl.data.image_ops import resize_image, resize_mask
from pipelines.data.exact_reader import ExactBatch, exact_loader
from shard_format.builds import open_builds
from shard_format.reader import iter_range
from shard_format.record import decode_record
from tests.pipelines.shard_fixtures import write_test_build
from tests.pipelines.train_fixtures import keys_of, write_build

UNEVEN = [23, 7, 41, 3, 30]  # 5 shards, 104 samples


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_build(tmp_path_factory.mktemp("uneven"), "toy", ["a", "b", "c", "d", "e"], UNEVEN, size=16)


def test_exact_stream_counts_the_samples_of_a_truncated_shard(tmp_path: Path) -> None:
    build = write_build(tmp_path, "toy", ["a", "b"], [12, 12], size=16)
    data = (build / "train-000000.tar").read_bytes()
    (build / "train-000000.tar").write_bytes(data[: len(data) // 3])
    batches = list(exact_loader(open_builds([build]), "train", 16, 5, 0))
    read = sum(len(b.keys) for b in batches)
    assert 12 <= read < 24 and read + sum(b.lost for b in batches) == 24


def test_exact_stream_reads_every_sample_once(build: Path) -> None:
    shard_set = open_builds([build])
    keys = []
    for rank in range(2):
        keys += [k for b in exact_loader(shard_set, "train", 16, 5, 2, rank, 2) for k in b.keys]
    assert sorted(keys) == sorted(keys_of(build))


def test_a_batch_holds_what_each_record_says(tmp_path: Path) -> None:
    """Images and masks resized as the transforms do, labels, classes, groups: checked against the records."""
    build = write_test_build(tmp_path / "b", "mvtec", ["bottle", "cable"], [5, 4], size=24)
    shard_set = open_builds([build])
    records = {r.key: r for url, _ in shard_set.sizes("test") for r in map(decode_record, iter_range(url))}
    batches = list(exact_loader(shard_set, "test", 16, 4, 0))
    assert all(isinstance(b, ExactBatch) and b.size <= 4 and not b.errors for b in batches)
    assert sorted(k for b in batches for k in b.keys) == sorted(records)
    for b in batches:
        for i, key in enumerate(b.keys):
            r = records[key]
            assert np.array_equal(b.images[i].permute(1, 2, 0).numpy(), resize_image(r.image, 16))
            assert int(b.labels[i]) == r.meta.label and b.groups[i] == f"{r.meta.dataset}/{r.meta.group}"
            assert int(b.classes[i]) == shard_set.class_index[r.meta.class_key]
            assert bool(b.has_mask[i]) == (r.mask is not None or r.meta.label == 0)
            expected = resize_mask(r.mask, 16) if r.mask is not None else np.zeros((16, 16), bool)
            assert np.array_equal(b.masks[i].numpy(), expected)
    assert any(bool(m.any()) for b in batches for m in b.masks)  # the build has anomalous samples with masks


def test_the_reader_refuses_what_verify_refuses(tmp_path: Path) -> None:
    """A train record in a test shard, a key that does not match its json, an extra member and a key seen twice
    are errors of the batch (the evaluator then fails unless partial results are allowed), never scored."""
    from tests.pipelines.shard_fixtures import sample_members, write_manifest, write_shard

    rng = np.random.default_rng(0)
    good = [sample_members("toy", "a", 0, "test", n, 16, rng, n % 2 == 1) for n in range(3)]
    wrong_split = sample_members("toy", "a", 0, "train", 3, 16, rng, False)  # a train record ...
    wrong_key = [(name.replace("toy/a/", "toy/b/"), data) for name, data in sample_members("toy", "a", 0, "test", 4,
                                                                                           16, rng, False)]
    extra = [*sample_members("toy", "a", 0, "test", 5, 16, rng, False), ("toy/a/test/good/img00005.txt", b"x")]
    entries = [write_shard(tmp_path, "test", 0, [*good, wrong_split, wrong_key, extra]),  # ... in a test shard
               write_shard(tmp_path, "test", 1, [good[0]])]  # the first key again
    write_manifest(tmp_path, "toy", {"toy/a": 0, "toy/b": 1}, {"test": {"a": {"normal": 5, "anomalous": 1}}},
                   entries)
    batches = list(exact_loader(open_builds([tmp_path]), "test", 16, 16, 0))
    keys = [k for b in batches for k in b.keys]
    errors = [e for b in batches for e in b.errors]
    assert sorted(keys) == ["toy/a/test/good/img00000", "toy/a/test/good/img00002", "toy/a/test/scratch/img00001"]
    assert len(errors) == 4
    assert any("split 'train' in a test shard" in e for e in errors)
    assert any("key does not match its json" in e for e in errors)
    assert any("expected one image" in e for e in errors)
    assert any("duplicate key" in e for e in errors)


def test_a_manifest_that_undercounts_its_shard_is_refused(tmp_path: Path) -> None:
    import json

    build = write_test_build(tmp_path, "toy", ["a", "b"], [4, 3])
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["shards"][0]["samples"] = 2  # two of the shard's four samples hidden from every count
    (build / "manifest.json").write_text(json.dumps(manifest))
    batches = list(exact_loader(open_builds([build]), "test", 16, 16, 0))
    errors = [e for b in batches for e in b.errors]
    assert any("holds more than the 2 samples its manifest lists" in e for e in errors)
    assert len([k for b in batches for k in b.keys]) == 2 + 3  # what the manifest promised, and nothing hidden
