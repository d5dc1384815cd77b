"""User-facing errors and warnings of the shard tools (DESIGN.md section 8)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class UserError(Exception):
    """Bad input from the user: printed as one clear message, exit code 2, no traceback."""


def warn(message: str) -> None:
    """Print a warning without breaking an active progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
