"""The build's resume journal, and the atomic JSON writes of journal and manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
