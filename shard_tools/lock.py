"""One build per output folder at a time: an advisory lock whose holder the second build names.

Two builds writing ``OUT/<dataset>`` at once delete each other's temporary shards and journal. The
lock is ``flock`` on ``OUT/<dataset>/.build.lock`` (which names the holder while it is held): the
kernel releases it when the holder exits, however it exits, so a killed build never leaves a stale
lock behind.
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

from shard_tools.errors import UserError

LOCK_NAME = ".build.lock"


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold the lock of ``directory`` (created if needed); UserError naming the holder if it is taken."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has just started"
            raise UserError(f"{directory} is being written by another build ({holder}); wait for it to finish "
                            "or stop it, then rerun (with --resume to keep its finished shards)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv)}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # an empty file when nobody holds it: the build's output stays byte-identical
