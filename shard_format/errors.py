"""Errors of the shard format: what a reader, a decoder or a manifest check raises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ERROR_KEY = "__error__"  # on a raw sample whose member the reader refused (over its size cap)


class ShardError(ValueError):
    """A missing, empty or corrupt shard build or record."""


class LostSamples(ShardError):
    """Planned samples a shard did not deliver: missing, truncated or corrupt (``lost``: how many; None if unknown)."""

    def __init__(self, message: str, lost: int | None) -> None:
        super().__init__(message)
        self.lost = lost


def refusal(sample: Mapping[str, Any]) -> str | None:
    """Why the reader refused this raw sample (a member over its cap, a sparse member, too many members), or
    None: the one place that knows how a refusal is marked."""
    return sample.get(ERROR_KEY)


def check_not_refused(sample: Mapping[str, Any]) -> None:
    """ShardError with the reader's reason when it refused the sample."""
    if (reason := refusal(sample)) is not None:
        raise ShardError(reason)


def lost_count(err: ShardError) -> int:
    """Planned samples a shard error cost (at least one)."""
    return max(1, err.lost or 0) if isinstance(err, LostSamples) else 1
