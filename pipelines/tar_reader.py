"""Read a range of samples from one WebDataset tar shard.

Plain ``tarfile`` instead of a webdataset pipeline: a worker often reads only part of a shard (the
data plan cuts at sample level), and on a local file the members before the range are skipped by
seeking over their data. ``pipe:CMD`` URLs (e.g. ``pipe:aws s3 cp s3://b/train-000000.tar -``) are
streamed. Members group into samples by key as in WebDataset (``<key>.<ext>``, key up to the first
dot of the file name).
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterator

from pipelines.shards import ShardError


def split_member(name: str) -> tuple[str, str]:
    """``"a/b/stem.mask.png"`` -> ``("a/b/stem", "mask.png")``."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_range(url: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Samples ``start <= i < stop`` of shard ``url`` as ``{"__key__", "__url__", ext: bytes}``.

    A missing file raises ShardError; a truncated or corrupt tar raises ShardError after the
    samples read so far were yielded.
    """
    with _open(url) as tar:
        index, current = -1, None
        try:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_member(member.name)
                if current is None or key != current["__key__"]:
                    if current is not None and index >= start:
                        yield current
                    index += 1
                    if stop is not None and index >= stop:
                        return
                    current = {"__key__": key, "__url__": url}
                if index >= start:
                    fileobj = tar.extractfile(member)
                    current[ext] = fileobj.read() if fileobj is not None else b""
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ShardError(f"{url}: corrupt or truncated shard after sample {index} ({err})") from None
        if current is not None and index >= start:
            yield current


class _open:
    """Context manager: a tarfile over a local path (seekable) or a ``pipe:`` command (streamed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> tarfile.TarFile:
        try:
            if self.url.startswith("pipe:"):
                self.proc = subprocess.Popen(self.url[5:], shell=True, stdout=subprocess.PIPE)
                self.tar = tarfile.open(fileobj=self.proc.stdout, mode="r|")
            else:
                path = Path(self.url.removeprefix("file:"))
                if not path.is_file():
                    raise ShardError(f"shard {path} does not exist")
                self.tar = tarfile.open(path, mode="r:")
        except (tarfile.TarError, OSError) as err:
            raise ShardError(f"{self.url}: not a readable tar ({err})") from None
        return self.tar

    def __exit__(self, *exc: object) -> None:
        self.tar.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
