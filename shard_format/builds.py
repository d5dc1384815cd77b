"""Shard builds seen as one data set: the merged class index and every shard of a split.

A build is a directory written by ``shard_tools/build.py``: ``{split}-NNNNNN.tar`` plus ``manifest.json``,
on local disk or under an object-store prefix (``shard_format.location``).
Training on several builds at once (all-in-all) merges their class indexes by name
(``dataset/class``), so class ids are those of the merged index, not the ``cls`` member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shard_format.errors import ShardError
from shard_format.fetch import ShardCache, ShardOpener
from shard_format.location import is_remote, join, object_size
from shard_format.manifest import ShardInfo, read_manifest
from shard_format.schema import MANIFEST_NAME, SPLITS


@dataclass(frozen=True)
class ShardSet:
    """One or several builds seen as one data set."""

    builds: tuple[str, ...]
    manifests: tuple[Mapping[str, Any], ...]
    class_index: Mapping[str, int]  # merged "dataset/class" -> id, ids in sorted-name order
    cache: ShardCache = field(default_factory=ShardCache)  # where remote shards are fetched to

    @property
    def class_names(self) -> list[str]:
        return sorted(self.class_index, key=self.class_index.__getitem__)

    @property
    def num_classes(self) -> int:
        return len(self.class_index)

    def shards(self, split: str) -> list[ShardInfo]:
        """Every shard of ``split`` over all builds, in a fixed order."""
        if split not in SPLITS:
            raise ShardError(f"split {split!r} is not one of {SPLITS}")
        out = []
        for build, manifest in zip(self.builds, self.manifests, strict=True):
            for entry in manifest["shards"]:
                if entry["split"] == split:
                    out.append(ShardInfo(build, entry["name"], split, int(entry["samples"]), int(entry["bytes"]),
                                         entry["sha256"]))
        return out

    def sizes(self, split: str) -> tuple[tuple[str, int], ...]:
        """(path, samples) of every shard of ``split``: what the data plans cut."""
        return tuple((s.url, s.samples) for s in self.shards(split))

    def count(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def datasets(self) -> list[str]:
        return [m["dataset"] for m in self.manifests]

    def opener(self) -> ShardOpener:
        """What the readers open this set's shards with: remote ones are fetched into ``self.cache`` and
        checked against their manifest entries (size, sha256)."""
        expected = {s.url: (s.bytes, s.sha256) for split in SPLITS for s in self.shards(split) if is_remote(s.url)}
        return ShardOpener(expected, self.cache)


def open_builds(builds: Sequence[str | Path], cache: ShardCache | None = None) -> ShardSet:
    """Read the manifests of ``builds`` and merge their class indexes by name; remote shards will be fetched
    into ``cache`` (default: not kept)."""
    if not builds:
        raise ShardError("no shard builds given (set data.shards)")
    manifests = tuple(read_manifest(b) for b in builds)
    names = sorted({name for m in manifests for name in m["classes"]})
    class_index = {name: i for i, name in enumerate(names)}
    return ShardSet(tuple(str(b) for b in builds), manifests, class_index, cache or ShardCache())


def shard_file_problems(shard_set: ShardSet, splits: Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing, resized): shards of ``splits`` that do not exist, and those whose size on disk differs
    from the manifest's (truncated or replaced: the readers then count what they lose)."""
    missing, resized = [], []
    for split in splits:
        for info in shard_set.shards(split):
            size = _size(info.url)
            if size is None:
                missing.append(f"shard {info.url} listed in {join(info.build, MANIFEST_NAME)} does not exist")
            elif info.bytes >= 0 and size != info.bytes:
                resized.append(f"shard {info.url}: {size} bytes, {join(info.build, MANIFEST_NAME)} says "
                               f"{info.bytes} (truncated or replaced)")
    return missing, resized


def _size(url: str) -> int | None:
    if is_remote(url):
        return object_size(url)
    path = Path(url)
    return path.stat().st_size if path.is_file() else None
