"""One build per output folder at a time: ``shard_format.lock`` on ``OUT/<dataset>/.build.lock``.

Two builds writing ``OUT/<dataset>`` at once delete each other's temporary shards and journal; the
second one stops at once and names the holder. The lock dies with its holder (flock).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from shard_format.lock import LockHeld, hold_lock
from shard_tools.errors import UserError

LOCK_NAME = ".build.lock"


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold the lock of ``directory`` (created if needed); UserError naming the holder if it is taken."""
    with ExitStack() as stack:
        try:
            stack.enter_context(hold_lock(directory / LOCK_NAME))
        except LockHeld as held:
            raise UserError(f"{directory} is being written by another build ({held.holder}); wait for it to "
                            "finish or stop it, then rerun (with --resume to keep its finished shards)") from None
        yield
