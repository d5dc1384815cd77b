"""Deterministic tar shards: fixed member metadata, written under a temporary name, renamed when complete."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

TAR_FORMAT = tarfile.GNU_FORMAT  # long keys (Real-IAD) need GNU long names; no timestamps in headers
UNAME = "ccl"
MODE = 0o644
_BLOCK = tarfile.BLOCKSIZE


def temp_name(name: str) -> str:
    """Where a shard lives while being written: hidden and not ending in .tar, so no reader picks it up."""
    return f".{name}.tmp"


class _HashingFile:
    """Write-through file that hashes and counts what passes (all tarfile needs of a file)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def sync_and_close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard as the manifest lists it."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


def closed_size(offset: int) -> int:
    """File size of a tar closed at ``offset``: two zero blocks, padded to a whole record."""
    return -(-(offset + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def member_bytes(sizes: list[int]) -> int:
    """Bytes that members of these sizes take in a tar (header block plus padded data, GNU long names aside)."""
    return sum(_BLOCK + -(-s // _BLOCK) * _BLOCK for s in sizes)


class ShardWriter:
    """One shard being written; ``finish`` renames it to its final name and reports it."""

    def __init__(self, directory: Path, name: str, split: str) -> None:
        self.directory, self.name, self.split = directory, name, split
        self.tmp_path = directory / temp_name(name)
        self._file = _HashingFile(self.tmp_path)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=TAR_FORMAT)
        self.samples = 0

    @property
    def offset(self) -> int:
        return self._tar.offset

    def add(self, key: str, members: tuple[tuple[str, bytes], ...]) -> None:
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, MODE
            info.uid = info.gid = 0
            info.uname = info.gname = UNAME
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def finish(self) -> ShardInfo:
        self._tar.close()
        self._file.sync_and_close()
        os.replace(self.tmp_path, self.directory / self.name)
        return ShardInfo(self.name, self.split, self.samples, self._file.size, self._file.sha256.hexdigest())

    def abandon(self) -> None:
        """Drop the partial file (on errors); a crash leaves only the hidden temporary name behind."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
