"""The build's resume journal, and the atomic JSON writes of journal and manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shard_format.atomic import write_atomic

JOURNAL_NAME = ".build-journal.json"  # per-shard progress; lets --resume keep every complete shard


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as JSON, written whole (a reader never sees half a file)."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or unreadable (a journal from a killed build)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
