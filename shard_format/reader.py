"""Read a range of samples from one local WebDataset tar shard, and say what the range lost.

Plain ``tarfile`` instead of a webdataset pipeline: a worker often reads only part of a shard (the
data plan cuts at sample level), and the members before the range are skipped by seeking over
their data. Members group into samples by key as in WebDataset (``<key>.<ext>``, key up to the
first dot of the file name).

A shard is data: the reader opens a local file and nothing else (no ``pipe:`` command; a remote shard is
fetched and checked by ``shard_format.fetch`` first, and read from the local copy),
never extracts members to disk, and reads no member larger than its kind's cap
(``shard_format.schema.member_limit``; an oversized member marks its sample ``__error__``). Only the members
a record uses are read (image, mask, json, cls); the names of others are listed under ``__unread__``
(verify reports them). A key with more than ``MAX_MEMBERS_PER_SAMPLE`` members and a sparse member (which
this format never writes; its logical size may be far above its bytes in the shard) mark the sample
``__error__`` and what was read of it is dropped. Python's
tarfile takes a cut header for the end of the archive, so a truncated shard would read as a short
one: the reader compares the samples it delivered with the planned range and raises
``LostSamples`` with the count.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from shard_format.errors import ERROR_KEY, LostSamples, ShardError
from shard_format.fetch import StorageError
from shard_format.schema import MAX_MEMBERS_PER_SAMPLE, RECORD_EXTENSIONS, member_limit

UNREAD_KEY = "__unread__"  # extensions of members a sample had but the record does not use (not read)


def split_member(name: str) -> tuple[str, str]:
    """``"a/b/stem.mask.png"`` -> ``("a/b/stem", "mask.png")``."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_range(path: str, start: int = 0, stop: int | None = None, total: int = -1,
               opener: Opener | None = None) -> Iterator[dict[str, Any]]:
    """Samples ``start <= i < stop`` of the shard file ``path`` as ``{"__key__", "__url__", ext: bytes}``.

    A missing file, a corrupt tar, or one that ends before ``stop`` raises ``LostSamples`` after the
    samples read so far were yielded; ``lost`` counts the planned samples not delivered (None when
    ``stop`` is None: the caller compares with the manifest itself). ``total``: the shard's count in its
    manifest; a range that ends there raises ``ShardError`` when the tar holds another sample after it (a
    manifest that undercounts would otherwise hide samples from every exactly-once count). ``opener``: how
    ``path`` is opened (``fetch.ShardOpener`` for remote builds: its ``StorageError`` passes through); a
    local file by default.
    """
    delivered = 0

    def lost(problem: str) -> LostSamples:
        count = None if stop is None else stop - start - delivered
        return LostSamples(f"{path}: {problem}" + (f"; {count} planned sample(s) lost" if count else ""), count)

    try:
        fileobj = (opener or _open_local)(path)
    except FileNotFoundError:
        raise lost("shard file does not exist") from None
    except OSError as err:
        raise lost(f"cannot open the shard ({err})") from None
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except (tarfile.TarError, OSError) as err:
        fileobj.close()
        raise lost(f"not a readable tar ({err})") from None
    with fileobj, tar:
        index, current, count = -1, None, 0
        try:
            for member in _members(tar):
                if not member.isfile():
                    continue
                key, ext = split_member(member.name)
                if current is None or key != current["__key__"]:
                    if current is not None and index >= start:
                        yield current
                        delivered += 1
                    index += 1
                    if stop is not None and index >= stop:
                        if stop == total:
                            raise ShardError(f"{path}: holds more than the {total} samples its manifest lists "
                                             f"(sample {key} follows): refused")
                        return
                    current, count = {"__key__": key, "__url__": path}, 0
                count += 1
                if index >= start:
                    _read_member(tar, member, ext, current, path, count)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise lost(f"corrupt or truncated shard after sample {index} ({err})") from None
        if current is not None and index >= start:
            yield current
            delivered += 1
        if stop is not None and start + delivered < stop:
            raise lost(f"the tar ends after sample {index} but the plan reads up to sample {stop - 1} "
                       "(a truncated shard reads as a short one)")


class Opener(Protocol):
    def __call__(self, url: str) -> BinaryIO: ...


class Range(Protocol):
    url: str
    start: int
    stop: int


def read_ranges(ranges: Iterable[Range], opener: Opener | None = None) -> Iterator[dict[str, Any] | ShardError]:
    """The samples of consecutive ranges; a broken shard yields its error in place of the samples it lost
    (a ``LostSamples`` counts them) and reading goes on with the next range. A remote shard that cannot be
    fetched as its manifest promised (``StorageError``) ends the reading: it is raised."""
    for r in ranges:
        try:
            yield from iter_range(r.url, r.start, r.stop, getattr(r, "total", -1), opener)
        except StorageError:
            raise
        except ShardError as err:
            yield err


def _open_local(path: str) -> BinaryIO:
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    return open(path, "rb")


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members one by one, without the list tarfile keeps of every member seen (a shard of millions of
    tiny members would hold them all in memory); nothing here looks a member up by name."""
    while (member := tar.next()) is not None:
        tar.members.clear()
        yield member


def _refuse(sample: dict[str, Any], reason: str) -> None:
    """Mark the sample broken and drop what was read of it (memory holds no refused sample's bytes)."""
    for ext in [e for e in sample if not e.startswith("__")]:
        del sample[ext]
    sample.setdefault(ERROR_KEY, reason)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, sample: dict[str, Any], path: str,
                 count: int) -> None:
    """Member bytes into ``sample[ext]`` (``count``: this is the sample's count-th member); a member the record
    does not use is noted, not read; a member over its cap, a sparse one or one too many is not read and marks
    the sample."""
    if count > MAX_MEMBERS_PER_SAMPLE:
        if count == MAX_MEMBERS_PER_SAMPLE + 1:
            _refuse(sample, f"{path}:{sample['__key__']}: more than {MAX_MEMBERS_PER_SAMPLE} members under one "
                            "key (refused, not read)")
            sample.pop(UNREAD_KEY, None)
        return
    if ERROR_KEY in sample:
        return  # already refused: nothing more of it is read
    if member.issparse():
        _refuse(sample, f"{path}:{member.name}: sparse member of {member.size} bytes (logical size): refused, "
                        "not read (this format never writes sparse members)")
        return
    if ext not in RECORD_EXTENSIONS:
        sample.setdefault(UNREAD_KEY, []).append(ext)
        return
    limit = member_limit(ext)
    if member.size > limit:  # tarfile's size is the logical one (what reading it would allocate)
        _refuse(sample, f"{path}:{member.name}: member of {member.size} bytes is over the "
                        f"{limit}-byte limit for .{ext} members (refused, not read)")
        return
    fileobj = tar.extractfile(member)
    sample[ext] = fileobj.read() if fileobj is not None else b""
