"""A remote shard made local before anything reads it: fetched in ranges, checked, optionally cached.

The readers (``reader.iter_range``) read a shard as a local tar: they seek over the samples before a
range and refuse oversized members from their headers. A remote shard is therefore fetched first, in
ranges of ``CHUNK`` bytes, and checked against its manifest entry (size before, sha256 after); only
then does the reader see it. So no sample of a changed object is ever used, and a transfer that fails
half-way is resumed from its last byte, never re-read into the stream: the sample count stays exact.

- Transient errors (connection reset or cut, timeouts, 5xx, throttling) are retried with exponential
  backoff, ``RETRIES`` times per shard; a missing object, a refused access or a changed object ends
  the job (``StorageError``: the readers pass it on instead of counting lost samples).
- ``ShardCache(directory, max_bytes)``: with ``max_bytes > 0`` a shard is kept as
  ``directory/<sha256>.tar`` (content-addressed: a changed object can never match a kept file), shared
  by the ranks of one node (one fetches under a lock, the others wait and use it) and evicted
  least-recently-used above ``max_bytes``. With ``max_bytes == 0`` (no cache) the shard goes to an
  unlinked temporary file in ``directory`` that disappears when the reader closes it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from shard_format.errors import ShardError
from shard_format.location import filesystem, is_remote, object_size
from shard_format.lock import wait_lock

CHUNK = 16 << 20  # bytes per range request: a failure costs at most this much again
RETRIES = 6  # per shard; backoff 0.5, 1, 2, 4, 8, 16 s
BACKOFF_S = 0.5
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ShardError)


class StorageError(ShardError):
    """A shard that cannot be fetched as its manifest promised (missing, refused, changed, or still failing
    after every retry): the job ends, no sample count is adjusted."""


@dataclass(frozen=True)
class ShardCache:
    """Where fetched shards go: ``directory`` (local), kept up to ``max_bytes`` (0: not kept)."""

    directory: str = ""  # "" -> <tmp>/ccl-shards-<uid>
    max_bytes: int = 0

    @property
    def path(self) -> Path:
        return Path(self.directory or Path(tempfile.gettempdir()) / f"ccl-shards-{os.getuid()}")


@dataclass(frozen=True)
class ShardOpener:
    """Opens a shard for reading by its location: a local file as it is, a remote one fetched and checked
    against ``expected[url] = (bytes, sha256)`` (its manifest entry). Picklable (DataLoader workers)."""

    expected: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    cache: ShardCache = field(default_factory=ShardCache)

    def __call__(self, url: str) -> BinaryIO:
        if not is_remote(url):
            return open(url, "rb")
        if url not in self.expected:
            raise StorageError(f"{url}: no manifest entry for this shard (not read)")
        size, sha256 = self.expected[url]
        return fetch(url, size, sha256, self.cache)


def fetch(url: str, size: int, sha256: str, cache: ShardCache) -> BinaryIO:
    """The shard at ``url``, checked against (``size``, ``sha256``), open for reading from a local file."""
    directory = cache.path
    directory.mkdir(parents=True, exist_ok=True)
    if cache.max_bytes <= 0:
        out = tempfile.TemporaryFile(dir=directory)  # unlinked: gone when the reader closes it
        _download(url, size, sha256, out)
        out.seek(0)
        return out
    kept = directory / f"{sha256}.tar"
    with wait_lock(directory / f"{sha256}.lock"):
        if not (kept.is_file() and kept.stat().st_size == size):
            part = directory / f".{sha256}.part-{os.getpid()}"
            try:
                with open(part, "wb") as out:
                    _download(url, size, sha256, out)
                part.replace(kept)
            finally:
                part.unlink(missing_ok=True)
            evict(directory, cache.max_bytes, keep=kept)
        now = time.time_ns()  # most recently used; explicit: the file system's own stamps are jiffy-coarse
        os.utime(kept, ns=(now, now))
        return open(kept, "rb")  # an open file survives its eviction by another process


def evict(directory: Path, max_bytes: int, keep: Path) -> list[Path]:
    """Remove the least recently used kept shards until the rest fit in ``max_bytes``; returns them."""
    kept = sorted((p for p in directory.glob("*.tar") if p != keep), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in kept) + (keep.stat().st_size if keep.is_file() else 0)
    removed = []
    for p in kept:
        if total <= max_bytes:
            break
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _download(url: str, size: int, sha256: str, out: BinaryIO) -> None:
    """``size`` bytes of ``url`` into ``out`` in ranges, retrying transient errors; StorageError otherwise."""
    fs, digest, done, failures = filesystem(url), hashlib.sha256(), 0, 0
    while True:
        try:
            if done == 0:
                _check_size(url, size)
            while done < size:
                block = fs.cat_file(url, start=done, end=min(done + CHUNK, size))
                if not block:
                    raise StorageError(f"{url}: ends at byte {done}, its manifest says {size} bytes: the object "
                                       "changed since the build (refused)")
                out.write(block)
                digest.update(block)
                done += len(block)
            break
        except PERMANENT as err:
            raise err if isinstance(err, StorageError) else StorageError(f"{url}: {_describe(err)}") from None
        except Exception as err:  # noqa: BLE001 - the clients raise many transient kinds (OSError, aiohttp, botocore)
            failures += 1
            if failures > RETRIES:
                raise StorageError(f"{url}: still failing after {RETRIES} retries ({_describe(err)})") from None
            time.sleep(BACKOFF_S * 2 ** (failures - 1))
    if digest.hexdigest() != sha256:
        raise StorageError(f"{url}: sha256 {digest.hexdigest()[:16]}... differs from its manifest's "
                           f"{sha256[:16]}...: the object changed since the build (refused)")


def _check_size(url: str, size: int) -> None:
    found = object_size(url)
    if found is None:
        raise FileNotFoundError(url)
    if found != size:
        raise StorageError(f"{url}: {found} bytes, its manifest says {size}: the object changed since the build "
                           "(refused)")


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
