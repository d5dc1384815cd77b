"""Byte sizes on the command line: ``256MB``, ``1GB``, ``64KiB`` or plain integers."""

from __future__ import annotations

import re

from shard_tools.errors import UserError

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str) -> int:
    """``"256MB"`` -> 256_000_000; raise UserError on anything else."""
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"cannot read byte size {text!r}: use e.g. 256MB, 1GB, 64MiB or a plain integer")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"byte size {text!r} must be positive")
    return value


def human_bytes(n: int) -> str:
    """Short decimal rendering for the summary table."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"
