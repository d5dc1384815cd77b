"""Where a build lives: a local folder, or an object-store prefix named in the user's config.

    s3://bucket/prefix/mvtec     (AWS, or any S3-compatible store through AWS_ENDPOINT_URL)
    gs://bucket/prefix/mvtec     (needs gcsfs)
    https://host/prefix/mvtec    (plain HTTPS with range requests)

A remote location only ever comes from the user (``data.shards``, ``--shards``); a manifest names
shard files inside its build (``{split}-NNNNNN.tar``, checked by ``schema.validate_manifest``), never
a location or a command. Clients are fsspec's (s3fs, gcsfs, its HTTP client): credentials and
endpoints come from their standard environment and profiles, never from a file this project writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shard_format.errors import ShardError

REMOTE_SCHEMES = ("s3", "gs", "https")
CLIENT_PACKAGE = {"s3": "s3fs", "gs": "gcsfs", "https": "aiohttp"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def scheme_of(location: str) -> str:
    """``"s3"`` for ``s3://...``; ``""`` for a local path. Any other scheme (``pipe:``, ``file:``, ``ftp://``) is
    refused: a build is a local folder or one of ``REMOTE_SCHEMES``."""
    m = _SCHEME.match(str(location))
    if m is None:
        return ""
    scheme = m.group(1).lower()
    if scheme not in REMOTE_SCHEMES or not str(location)[m.end():].startswith("//"):
        raise ShardError(f"{location}: not a shard location (a local folder or "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return scheme


def is_remote(location: str) -> bool:
    return scheme_of(location) != ""


def join(build: str, name: str) -> str:
    """The location of the file ``name`` inside ``build`` (a local path or a URL)."""
    if is_remote(build):
        return f"{build.rstrip('/')}/{name}"
    return str(Path(build) / name)


# Every client this process made, kept alive for good. fsspec drops its cached instances in a forked child (a loader
# worker); a client inherited that way would then be collected there, and its finalizer closes the parent's session
# on whatever event loop runs the collection, the child's own I/O loop included: "attached to a different loop",
# logged as a traceback. Held here, an inherited client is never collected in the child (which ends with os._exit).
_CLIENTS: dict[int, Any] = {}


def filesystem(url: str) -> Any:
    """fsspec's filesystem for ``url`` (one per process: fsspec caches instances and drops them after a fork)."""
    scheme = scheme_of(url)
    try:
        import fsspec

        fs = fsspec.filesystem(scheme)
        _CLIENTS.setdefault(id(fs), fs)  # a kept client's id is never reused
        return fs
    except ImportError as err:
        raise ShardError(f"{url}: reading {scheme}:// needs {CLIENT_PACKAGE[scheme]} "
                         f"(pip install {CLIENT_PACKAGE[scheme]}): {err}") from None


def read_small(url: str, limit: int) -> bytes:
    """The whole object at ``url`` (a manifest), refused above ``limit`` bytes; FileNotFoundError if absent."""
    fs = filesystem(url)
    size = object_size(url)
    if size is None:
        raise FileNotFoundError(url)
    if size > limit:
        raise ShardError(f"{url}: {size} bytes, over the {limit}-byte limit for this file: refused")
    return fs.cat_file(url)


def object_size(url: str) -> int | None:
    """The size of the object at ``url``; None when there is none."""
    fs = filesystem(url)
    fs.invalidate_cache(url)  # a listing cached earlier in this process must not hide a changed object
    try:
        info = fs.info(url)
    except FileNotFoundError:
        return None
    if info.get("type") == "directory":
        return None
    return int(info["size"])


def write_small(url: str, data: bytes) -> None:
    """Put ``data`` at ``url`` in one request (a sidecar or a manifest: an object store replaces it whole)."""
    filesystem(url).pipe_file(url, data)
