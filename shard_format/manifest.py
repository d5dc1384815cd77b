"""``manifest.json`` of a build: made by the builder from its finished shards, read (and checked) by everyone.

The keys are listed in ``shard_format.schema`` (``MANIFEST_*``), which also validates a manifest read back.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shard_format.errors import ShardError
from shard_format.schema import (
    BUILDER_VERSION,
    MANIFEST_NAME,
    SHARD_KEYS,
    SPLITS,
    SchemaError,
    validate_manifest,
)


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a build, as the manifest lists it."""

    build: str  # the build directory it belongs to
    name: str  # file name inside the build, checked by validate_manifest when read back
    split: str
    samples: int
    bytes: int = -1  # size the manifest promises (-1: unknown)
    sha256: str = ""

    @property
    def url(self) -> str:
        """The local path of the shard file (never a URL a reader would fetch or run)."""
        return str(Path(self.build) / self.name)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {k: getattr(self, k) for k in SHARD_KEYS}


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST_NAME


def sum_counts(entries: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """Per split and class: normal / anomalous sample counts, from shard entries with per-class counts."""
    counts: dict[str, dict[str, dict[str, int]]] = {s: defaultdict(lambda: {"normal": 0, "anomalous": 0})
                                                    for s in SPLITS}
    for entry in entries:
        for class_name, (normal, anomalous) in entry["counts"].items():
            slot = counts[entry["split"]][class_name]
            slot["normal"] += normal
            slot["anomalous"] += anomalous
    return {split: dict(sorted(per.items())) for split, per in counts.items()}


def make_manifest(dataset: str, args: dict, classes: dict[str, int], entries: list[dict],
                  skipped: list[dict]) -> dict:
    """The manifest of DESIGN.md section 4."""
    return {
        "builder_version": BUILDER_VERSION,
        "dataset": dataset,
        "args": args,
        "classes": classes,
        "counts": sum_counts(entries),
        "shards": [{k: e[k] for k in SHARD_KEYS} for e in entries],
        "skipped": sorted(skipped, key=lambda s: (s["source"], s["reason"])),
    }


def read_manifest(build: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a build, with a clear error when the directory is not a build."""
    build = Path(build)
    if not build.is_dir():
        raise ShardError(f"shard build {build} does not exist (build it with shard_tools/build.py)")
    path = manifest_path(build)
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
