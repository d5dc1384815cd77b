"""One module per dataset layout; each exposes ``scan(root, options) -> Scan``.

The writer never knows a dataset: it only sees the items a source returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shard_tools.errors import UserError
from shard_tools.items import Scan, SourceOptions
from shard_tools.sources import btad, cocoad, manta, mvtec, realiad, visa

ScanFn = Callable[[Path, SourceOptions], Scan]

# ``folder`` is a user's own data in the MVTec layout; ``demo``, ``inspect`` and ``lookalike`` are generated, then
# read the same way.
SOURCES: dict[str, ScanFn] = {
    "mvtec": mvtec.scan,
    "visa": visa.scan,
    "btad": btad.scan,
    "realiad": realiad.scan,
    "manta": manta.scan,
    "cocoad": cocoad.scan,
    "folder": mvtec.scan,
    "demo": mvtec.scan,
    "inspect": mvtec.scan,
    "lookalike": mvtec.scan,
}


def get_source(name: str) -> ScanFn:
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]
