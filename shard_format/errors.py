"""Errors of the shard format: what a reader, a decoder or a manifest check raises."""

from __future__ import annotations

ERROR_KEY = "__error__"  # on a raw sample whose member the reader refused (over its size cap)


class ShardError(ValueError):
    """A missing, empty or corrupt shard build or record."""


class LostSamples(ShardError):
    """Planned samples a shard did not deliver: missing, truncated or corrupt (``lost``: how many; None if unknown)."""

    def __init__(self, message: str, lost: int | None) -> None:
        super().__init__(message)
        self.lost = lost


def lost_count(err: ShardError) -> int:
    """Planned samples a shard error cost (at least one)."""
    return max(1, err.lost or 0) if isinstance(err, LostSamples) else 1
