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
from shard_format.location import is_remote, join, read_small
from shard_format.schema import (
    BUILDER_VERSION,
    MANIFEST_NAME,
    SHARD_KEYS,
    SPLITS,
    SchemaError,
    validate_manifest,
)

MAX_MANIFEST_BYTES = 1 << 30  # a manifest of millions of shards is ~100 MB; nothing legitimate is larger


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
        """The shard file's location: inside its build (a local path, or a URL under the build's remote prefix)."""
        return join(self.build, self.name)

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
    """``manifest.json`` of a build (a local folder or a remote prefix), with a clear error when it is not a build."""
    path, text = _manifest_text(str(build))
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from None
    try:
        validate_manifest(manifest, str(path))
    except SchemaError as err:
        raise ShardError(str(err)) from None
    return manifest


def manifest_bytes(build: str | Path) -> bytes:
    """The raw ``manifest.json`` of a build (what digests of a build are taken over)."""
    return _manifest_text(str(build))[1]


def _manifest_text(build: str) -> tuple[str, bytes]:
    """(where, bytes) of a build's manifest; ShardError when the build or its manifest does not exist."""
    if is_remote(build):
        url = join(build, MANIFEST_NAME)
        try:
            return url, read_small(url, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise ShardError(f"{build} has no {MANIFEST_NAME}: not a shard build (or its upload did not finish)") \
                from None
        except ShardError:
            raise
        except Exception as err:  # noqa: BLE001 - the clients' errors are of many kinds (OSError, botocore, aiohttp)
            raise ShardError(f"{url}: cannot read the manifest ({type(err).__name__}: {err})") from None
    if not Path(build).is_dir():
        raise ShardError(f"shard build {build} does not exist (build it with shard_tools/build.py)")
    path = manifest_path(Path(build))
    if not path.is_file():
        raise ShardError(f"{build} has no {MANIFEST_NAME}: not a shard build (or the build did not finish)")
    return str(path), path.read_bytes()
