"""The build's manifest and its resume journal: atomic JSON files beside the shards."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ccl.data.schema import BUILDER_VERSION, MANIFEST_NAME, SPLITS

JOURNAL_NAME = ".build-journal.json"  # per-shard progress; lets --resume keep every complete shard


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary name and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a journal from a killed build)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def sum_counts(entries: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """Per split and class: normal / anomalous sample counts, from the journal's shard entries."""
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
    """The manifest of DESIGN.md section 4 (keys listed in ccl/data/schema.py)."""
    shard_keys = ("name", "split", "samples", "bytes", "sha256")
    return {
        "builder_version": BUILDER_VERSION,
        "dataset": dataset,
        "args": args,
        "classes": classes,
        "counts": sum_counts(entries),
        "shards": [{k: e[k] for k in shard_keys} for e in entries],
        "skipped": sorted(skipped, key=lambda s: (s["source"], s["reason"])),
    }


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST_NAME
