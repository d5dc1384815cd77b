"""Shard builds on disk: manifests, the merged class index, and decoding one record.

A build is a directory written by ``shard_tools/build.py``: ``{split}-NNNNNN.tar`` plus ``manifest.json``.
Training on several builds at once (all-in-all) merges their class indexes by name
(``dataset/class``), so class ids are those of the merged index, not the ``cls`` member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ccl.data.schema import (
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    MASK_EXTENSION,
    META_EXTENSION,
    SPLITS,
    RecordMeta,
    SchemaError,
    validate_manifest,
    validate_meta,
)


class ShardError(ValueError):
    """A missing, empty or corrupt shard build or record."""


ERROR_KEY = "__error__"  # on a raw sample whose member the reader refused (over its size cap)


class LostSamples(ShardError):
    """Planned samples a shard did not deliver: missing, truncated or corrupt (``lost``: how many; None if unknown)."""

    def __init__(self, message: str, lost: int | None) -> None:
        super().__init__(message)
        self.lost = lost


@dataclass(frozen=True)
class ShardInfo:
    url: str  # local path: the build directory joined with a manifest name checked by validate_manifest
    split: str
    samples: int
    build: str  # the build directory it belongs to
    bytes: int = -1  # size the manifest promises (-1: unknown)


@dataclass(frozen=True)
class ShardSet:
    """One or several builds seen as one data set."""

    builds: tuple[str, ...]
    manifests: tuple[Mapping[str, Any], ...]
    class_index: Mapping[str, int]  # merged "dataset/class" -> id, ids in sorted-name order

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
        for build, manifest in zip(self.builds, self.manifests):
            for entry in manifest["shards"]:
                if entry["split"] == split:
                    url = str(Path(build) / entry["name"])
                    out.append(ShardInfo(url, split, int(entry["samples"]), build, int(entry["bytes"])))
        return out

    def count(self, split: str) -> int:
        return sum(s.samples for s in self.shards(split))

    def datasets(self) -> list[str]:
        return [m["dataset"] for m in self.manifests]


def read_manifest(build: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a build, with a clear error when the directory is not a build."""
    build = Path(build)
    if not build.is_dir():
        raise ShardError(f"shard build {build} does not exist (build it with shard_tools/build.py)")
    path = build / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{build} has no {MANIFEST_NAME}: not a shard build (or the build did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from None
    try:
        validate_manifest(manifest, str(path))
    except SchemaError as err:
        raise ShardError(str(err)) from None
    return manifest


def shard_file_problems(shard_set: ShardSet, splits: Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing, resized): shards of ``splits`` that do not exist, and those whose size on disk differs
    from the manifest's (truncated or replaced: the readers then count what they lose)."""
    missing, resized = [], []
    for split in splits:
        for info in shard_set.shards(split):
            path = Path(info.url)
            if not path.is_file():
                missing.append(f"shard {path} listed in {info.build}/{MANIFEST_NAME} does not exist")
            elif info.bytes >= 0 and path.stat().st_size != info.bytes:
                resized.append(f"shard {path}: {path.stat().st_size} bytes, {info.build}/{MANIFEST_NAME} says "
                               f"{info.bytes} (truncated or replaced)")
    return missing, resized


def open_builds(builds: Sequence[str | Path]) -> ShardSet:
    """Read the manifests of ``builds`` and merge their class indexes by name."""
    if not builds:
        raise ShardError("no shard builds given (set data.shards)")
    manifests = tuple(read_manifest(b) for b in builds)
    names = sorted({name for m in manifests for name in m["classes"]})
    class_index = {name: i for i, name in enumerate(names)}
    return ShardSet(tuple(str(b) for b in builds), manifests, class_index)


@dataclass(frozen=True)
class Record:
    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) bool; None when the sample has no pixel ground truth
    meta: RecordMeta


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise ShardError(f"{where}: image does not decode")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """0/255 PNG -> (H, W) bool."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise ShardError(f"{where}: mask does not decode")
    return array >= 128


def decode_record(sample: Mapping[str, Any]) -> Record:
    """A raw WebDataset sample (``__key__`` plus member bytes) -> ``Record``; ShardError when broken."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')}:{key}"
    if ERROR_KEY in sample:
        raise ShardError(sample[ERROR_KEY])
    if META_EXTENSION not in sample:
        raise ShardError(f"{where}: sample has no {META_EXTENSION} member")
    try:
        meta = validate_meta(json.loads(sample[META_EXTENSION]), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{where}: json member does not parse ({err})") from None
    except SchemaError as err:
        raise ShardError(str(err)) from None
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ShardError(f"{where}: sample has no image member ({'/'.join(IMAGE_EXTENSIONS)})")
    image = decode_image(sample[ext], where)
    mask = decode_mask(sample[MASK_EXTENSION], where) if MASK_EXTENSION in sample else None
    if mask is not None and mask.shape != image.shape[:2]:
        raise ShardError(f"{where}: mask {mask.shape} and image {image.shape[:2]} differ in size")
    return Record(key, image, mask, meta)
