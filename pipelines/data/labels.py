"""The contrastive class of a training sample: the merged class index (raw) or a pseudo-label sidecar.

``data.class_source=raw`` labels a sample with its class in the merged index of the builds;
``data.class_source=pseudo`` with the id that ``shard_tools/pseudo_classes.py`` wrote for its key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.base.config import ClassSource
from shard_format.builds import ShardSet
from shard_format.errors import ShardError, check_not_refused
from shard_format.location import is_remote, join, read_small
from shard_format.schema import META_EXTENSION, PSEUDO_CLASSES_NAME, class_key

MAX_SIDECAR_BYTES = 1 << 30  # ~20 bytes per key: tens of millions of samples


@dataclass(frozen=True)
class Labels:
    """Sample -> contrastive class: the merged class index (raw) or a pseudo-label sidecar."""

    class_index: Mapping[str, int]
    pseudo: Mapping[str, int] | None = None
    num_classes: int = 0

    def of(self, sample: Mapping[str, Any]) -> int:
        check_not_refused(sample)
        if self.pseudo is not None:
            key = sample["__key__"]
            if key not in self.pseudo:
                raise ShardError(f"{sample.get('__url__')}:{key}: no pseudo label for this sample")
            return self.pseudo[key]
        try:
            meta = json.loads(sample[META_EXTENSION])
            return self.class_index[class_key(meta["dataset"], meta["class_name"])]
        except (KeyError, ValueError, TypeError) as err:
            raise ShardError(f"{sample.get('__url__')}:{sample.get('__key__')}: no class ({err!r})") from None


def load_labels(shard_set: ShardSet, class_source: ClassSource, pseudo_file: str = "") -> Labels:
    """Labels for ``data.class_source`` (raw | pseudo, checked when the config loads); pseudo files are
    ``{"k", "labels": {key: id}}``."""
    if class_source == "raw":
        return Labels(dict(shard_set.class_index), None, train_class_count(shard_set))
    merged: dict[str, int] = {}
    k = 0
    for build in shard_set.builds:
        name = pseudo_file or PSEUDO_CLASSES_NAME
        path = name if "/" in name else join(build, name)
        try:
            doc = json.loads(read_sidecar(path))
        except json.JSONDecodeError as err:
            raise ShardError(f"{path}: pseudo-class file is not valid JSON ({err})") from None
        if not isinstance(doc, dict) or "k" not in doc or "labels" not in doc:
            raise ShardError(f"{path}: expected {{'k': K, 'labels': {{key: id}}}}")
        k = max(k, int(doc["k"]))
        merged.update({str(key): int(v) for key, v in doc["labels"].items()})
    return Labels(dict(shard_set.class_index), merged, k)


def read_sidecar(path: str) -> bytes:
    """A pseudo-class file's bytes (local or remote); ShardError naming it when it does not exist."""
    try:
        return read_small(path, MAX_SIDECAR_BYTES) if is_remote(path) else Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ShardError(f"data.class_source=pseudo but {path} does not exist "
                         "(make it with shard_tools/pseudo_classes.py)") from None


def train_class_count(shard_set: ShardSet) -> int:
    """Classes with training samples (manifest counts), else the size of the class index."""
    names = {(m["dataset"], c) for m in shard_set.manifests for c in m.get("counts", {}).get("train", {})}
    return len(names) or shard_set.num_classes
