"""Whole-file writes that a reader, or a crash halfway, never sees half of: a hidden temporary name beside
the file, flushed to disk, then renamed over it (a rename within one folder is atomic on POSIX)."""

from __future__ import annotations

import os
from pathlib import Path


def temp_name(name: str) -> str:
    """The hidden name a file is written under before its rename (the builder clears leftovers of it)."""
    return f".{name}.tmp"


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` so that ``path`` holds the old content or all of the new;
    a failed write leaves no temporary file behind."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def set_aside(folder: str | Path, keep: tuple[str, ...] = (), keep_prefixes: tuple[str, ...] = ()) -> Path | None:
    """Move what an earlier run left in ``folder`` into ``folder/previous-<time>/`` (None when nothing was
    there): an output folder holds one run's outputs, and nothing of the earlier run is deleted. ``keep``:
    names that stay (and earlier ``previous-*`` folders always do)."""
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir()
                   if p.name not in keep and not p.name.startswith(("previous-", *keep_prefixes)))
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = folder / f"previous-{stamp}", 1
    while target.exists():
        n += 1
        target = folder / f"previous-{stamp}-{n}"
    target.mkdir()
    for name in names:
        (folder / name).rename(target / name)
    return target


def check_writable(folder: str | Path, what: str) -> None:
    """``folder`` is (or is made) a directory this process can write, before any work: an OSError naming it."""
    import tempfile

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(err.errno, f"{what} is not a writable directory ({err.strerror})", str(path)) from None
