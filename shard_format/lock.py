"""One writer per folder at a time: an advisory ``flock`` whose holder the refused writer can name
(``hold_lock``), or one process at a time on a shared piece of work (``wait_lock``).

The lock file names its holder while it is held; the kernel releases the lock when the holder exits,
however it exits (killed too), so no stale lock is ever left behind. Used by the shard builder (one
build per ``OUT/<dataset>``) and the trainer (one launch per ``run.dir``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockHeld(Exception):
    """The lock is held by another process; ``holder`` is what that process wrote about itself."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


@contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` (its folder created if needed) until the block ends; LockHeld if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LockHeld(path, f.read().strip() or "a process that has just started") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv)}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # an empty file when nobody holds it: a build's output stays byte-identical


@contextmanager
def wait_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path``, waiting for its holder first (processes that share work, such as the ranks
    fetching one shard into a cache they share: the first fetches, the others wait and find the result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
