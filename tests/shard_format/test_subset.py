"""A build restricted to some classes: the same records, byte for byte, and a manifest that says so."""

from __future__ import annotations

import json
import multiprocessing
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shard_format.builds import open_builds
from shard_format.errors import ShardError
from shard_format.subset import subset_name, write_subset
from tests.pipelines.shard_fixtures import sample_members, write_manifest, write_shard

CLASSES = ["bottle", "cable", "grid"]


def three_split_build(out: Path) -> Path:
    """train (2 shards), val, test shards of three classes, classes interleaved inside every shard."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    index = {f"toy/{c}": i for i, c in enumerate(CLASSES)}
    entries, counts, n = [], {}, 0
    for split, sizes in (("train", [7, 5]), ("val", [3]), ("test", [6])):
        for number, size in enumerate(sizes):
            samples = []
            for _ in range(size):
                cls = CLASSES[n % 3]
                bad = split == "test" and n % 2 == 1
                samples.append(sample_members("toy", cls, index[f"toy/{cls}"], split, n, 16, rng, bad))
                kind = "anomalous" if bad else "normal"
                counts.setdefault(split, {}).setdefault(cls, {"normal": 0, "anomalous": 0})[kind] += 1
                n += 1
            entries.append(write_shard(out, split, number, samples))
    return write_manifest(out, "toy", index, counts, entries)


def members_by_class(build: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Every member (name, bytes) of every tar of the build, read with tarfile, grouped by class folder."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for path in sorted(build.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                out.setdefault(m.name.split("/")[1], []).append((m.name, tar.extractfile(m).read()))
    return out


def test_subset_holds_exactly_the_selected_records_with_the_source_class_index(tmp_path: Path) -> None:
    source = three_split_build(tmp_path / "toy")
    subset = write_subset(source, ["toy/bottle", "toy/grid"], tmp_path / "sub")
    original, kept = members_by_class(source), members_by_class(subset)
    assert sorted(kept) == ["bottle", "grid"]
    for cls in kept:
        assert sorted(kept[cls]) == sorted(original[cls])  # every member, byte for byte
    manifest = json.loads((subset / "manifest.json").read_text())
    assert manifest["classes"] == json.loads((source / "manifest.json").read_text())["classes"]
    assert {split: sorted(c) for split, c in manifest["counts"].items()} == \
        {"train": ["bottle", "grid"], "val": ["bottle", "grid"], "test": ["bottle", "grid"]}
    assert manifest["counts"]["test"]["bottle"] == {"normal": 1, "anomalous": 1}
    shard_set = open_builds([subset])
    assert shard_set.class_index == open_builds([source]).class_index
    assert shard_set.count("train") == 8 and shard_set.count("test") == 4  # of 12 and 6


def test_a_second_call_reuses_the_subset_and_another_selection_is_refused(tmp_path: Path) -> None:
    source = three_split_build(tmp_path / "toy")
    first = write_subset(source, ["toy/cable"], tmp_path / "sub")
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert write_subset(source, ["toy/cable"], tmp_path / "sub") == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ShardError, match="holds another subset"):
        write_subset(source, ["toy/grid"], tmp_path / "sub")
    assert subset_name(source, ["toy/cable"]) != subset_name(source, ["toy/grid"])


def test_unknown_classes_and_changed_shards_are_refused_with_their_names(tmp_path: Path) -> None:
    source = three_split_build(tmp_path / "toy")
    with pytest.raises(ShardError, match=r"toy/screw.*not classes of"):
        write_subset(source, ["toy/screw"], tmp_path / "a")
    shard = source / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes: only the sha256 tells
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-000001.tar differs from"):
        write_subset(source, ["toy/bottle"], tmp_path / "b")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".tmp-*"))


def _make(args: tuple[str, str]) -> str:
    return str(write_subset(args[0], ["toy/grid"], args[1]))


def test_processes_making_the_same_subset_at_once_agree_on_one(tmp_path: Path) -> None:
    source = three_split_build(tmp_path / "toy")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_make, [(str(source), str(tmp_path / "sub"))] * 3)
    assert set(results) == {str(tmp_path / "sub")}
    assert not list(tmp_path.glob(".tmp-*"))
    assert sorted(members_by_class(tmp_path / "sub")) == ["grid"]
