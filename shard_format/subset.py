"""A build restricted to some of its classes: the data of one-for-one, sequential and continual training.

    subset = write_subset("data/shards/mvtec", ["mvtec/bottle"], "runs/x/data/mvtec-1a2b3c4d")

The subset is a build of its own (``{split}-NNNNNN.tar`` + ``manifest.json``), so everything that reads
builds (the training plan, the exactly-once readers, the manifest checks) works on it unchanged. Its
records are the source's bytes, copied member by member, and its manifest keeps the source's whole
class index, so class ids are the same as in a run on the whole build; ``counts`` lists only the
selected classes. Each source shard is checked against its manifest (sha256, sample count) as it is
read: a subset is never made from a shard that differs from what its build promised.

The output is written under a temporary name and renamed into place. Several processes may make the
same subset at once (every rank of a run does, before any process group exists): each writes its own
temporary copy, the first rename wins, the others find the finished subset and use it. The subset's
folder name carries a digest of the source manifest and the classes, so a changed source or another
selection never reuses a stale subset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shard_format.atomic import write_atomic
from shard_format.errors import ShardError, refusal
from shard_format.location import is_remote, join
from shard_format.manifest import manifest_bytes, read_manifest, sum_counts
from shard_format.reader import Opener, iter_range
from shard_format.schema import META_EXTENSION, SPLITS, class_key, shard_name
from shard_format.writer import ShardWriter, file_sha256

MAX_SUBSET_SHARD_BYTES = 256 << 20


def subset_name(build: str | Path, classes: Sequence[str]) -> str:
    """``<dataset>-<digest>``: the folder name of a subset (digest of the source manifest and the classes)."""
    manifest = read_manifest(build)
    digest = hashlib.sha256(manifest_bytes(build))
    digest.update(json.dumps(sorted(classes)).encode())
    return f"{manifest['dataset']}-{digest.hexdigest()[:12]}"


def write_subset(build: str | Path, classes: Sequence[str], out: str | Path, opener: Opener | None = None) -> Path:
    """Write (or reuse) the subset of ``build`` holding only ``classes`` ("dataset/class") at ``out`` (local).
    ``opener``: how the source's shards are opened (``ShardSet.opener()`` for a remote build)."""
    build, out = str(build), Path(out)
    manifest = read_manifest(build)
    wanted = set(classes)
    unknown = sorted(wanted - set(manifest["classes"]))
    if unknown:
        raise ShardError(f"classes {unknown} are not classes of {build} "
                         f"(classes: {', '.join(sorted(manifest['classes']))})")
    if (out / "manifest.json").is_file():
        return _reuse(out, build, wanted)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries = _copy_selected(build, manifest, wanted, tmp, opener)
        subset = {**manifest, "args": {"subset_of": manifest.get("args", {}), "classes": sorted(wanted)},
                  "counts": sum_counts(entries), "shards": [{k: e[k] for k in e if k != "counts"} for e in entries],
                  "skipped": []}
        write_atomic(tmp / "manifest.json", json.dumps(subset, indent=1, sort_keys=True))
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same subset first
            if not (out / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _reuse(out, build, wanted)


def _reuse(out: Path, build: str, wanted: set[str]) -> Path:
    """``out`` if it is the subset asked for; ShardError naming it otherwise."""
    found = read_manifest(out).get("args", {}).get("classes")
    if found != sorted(wanted):
        raise ShardError(f"{out} holds another subset of {build} (classes {found}, wanted {sorted(wanted)}): "
                         "remove it")
    return out


def _copy_selected(build: str, manifest: dict[str, Any], wanted: set[str], out: Path,
                   opener: Opener | None) -> list[dict[str, Any]]:
    """Copy the selected samples of every shard, split by split; returns the new shards' manifest entries."""
    entries: list[dict[str, Any]] = []
    for split in SPLITS:
        writer, index, counts = None, 0, {}
        for entry in (e for e in manifest["shards"] if e["split"] == split):
            path = join(build, entry["name"])
            if not is_remote(path):  # a remote shard is checked as it is fetched
                _check_shard(Path(path), entry, build)
            for sample in iter_range(path, 0, entry["samples"], entry["samples"], opener):
                if refusal(sample) is not None or META_EXTENSION not in sample:
                    raise ShardError(f"{path}: sample {sample['__key__']} cannot be copied into a subset: "
                                     f"{refusal(sample) or 'it has no json member'}")
                meta = json.loads(sample[META_EXTENSION])
                if class_key(meta["dataset"], meta["class_name"]) not in wanted:
                    continue
                if writer is None:
                    writer = ShardWriter(out, shard_name(split, index), split)
                members = tuple((ext, data) for ext, data in sample.items() if not ext.startswith("__"))
                writer.add(sample["__key__"], members)
                normal, anomalous = counts.get(meta["class_name"], (0, 0))
                bad = int(meta["label"]) == 1
                counts[meta["class_name"]] = (normal + (not bad), anomalous + bad)
                if writer.offset >= MAX_SUBSET_SHARD_BYTES:
                    entries.append({**writer.finish().to_json(), "counts": counts})
                    writer, index, counts = None, index + 1, {}
        if writer is not None:
            entries.append({**writer.finish().to_json(), "counts": counts})
    return entries


def _check_shard(path: Path, entry: dict[str, Any], build: str) -> None:
    """The source shard is the one its manifest lists (size and sha256), or ShardError naming it."""
    if not path.is_file():
        raise ShardError(f"shard {path} listed in {build}/manifest.json does not exist")
    if path.stat().st_size != entry["bytes"] or (entry["sha256"] and file_sha256(path) != entry["sha256"]):
        raise ShardError(f"shard {path} differs from {build}/manifest.json (size or sha256): refused")

