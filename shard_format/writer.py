"""Deterministic tar shards: fixed member metadata, written under a temporary name, renamed when complete.

Headers are the GNU-format headers Python's tarfile writes (mtime 0, uid/gid 0, uname/gname "ccl",
mode 0644); the common case (names under 100 bytes) patches a prebuilt header instead of calling
tarfile per member, which is most of the per-image cost of a build without resize.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from shard_format.atomic import temp_name
from shard_format.manifest import ShardInfo

TAR_FORMAT = tarfile.GNU_FORMAT  # long keys (Real-IAD) need GNU long names; no timestamps in headers
UNAME = "ccl"
MODE = 0o644
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ENCODING = "utf-8"


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, MODE
    info.uid = info.gid = 0
    info.uname = info.gname = UNAME
    return info


_TEMPLATE = _info("", 0).tobuf(TAR_FORMAT, _ENCODING, "surrogateescape")


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of a regular file member, byte-identical to tarfile's."""
    raw = name.encode(_ENCODING)
    if len(raw) >= 100 or size >= 8**11:
        return _info(name, size).tobuf(TAR_FORMAT, _ENCODING, "surrogateescape")
    header = bytearray(_TEMPLATE)
    header[0:100] = raw.ljust(100, b"\0")
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def member_bytes(sizes: list[int]) -> int:
    """Bytes that members of these sizes take in a tar (header block plus padded data, GNU long names aside)."""
    return sum(_BLOCK + -(-s // _BLOCK) * _BLOCK for s in sizes)


def closed_size(offset: int) -> int:
    """File size of a tar closed at ``offset``: two zero blocks, padded to a whole record."""
    return -(-(offset + 2 * _BLOCK) // _RECORD) * _RECORD


class ShardWriter:
    """One shard being written; ``finish`` renames it to its final name and reports it."""

    def __init__(self, directory: Path, name: str, split: str) -> None:
        self.directory, self.name, self.split = directory, name, split
        self.tmp_path = directory / temp_name(name)
        self._file = open(self.tmp_path, "wb")
        self._sha256 = hashlib.sha256()
        self.offset = 0
        self.samples = 0

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha256.update(data)
        self.offset += len(data)

    def add(self, key: str, members: tuple[tuple[str, bytes], ...]) -> None:
        """One sample: its members, in order, written with one call."""
        parts = []
        for ext, data in members:
            parts += (member_header(f"{key}.{ext}", len(data)), data, b"\0" * (-len(data) % _BLOCK))
        self._write(b"".join(parts))
        self.samples += 1

    def finish(self) -> ShardInfo:
        self._write(b"\0" * (closed_size(self.offset) - self.offset))
        # No fsync: a shard damaged by a power cut fails its journaled sha256 on --resume and is rebuilt.
        self._file.close()
        os.replace(self.tmp_path, self.directory / self.name)
        return ShardInfo(str(self.directory), self.name, self.split, self.samples, self.offset,
                         self._sha256.hexdigest())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
