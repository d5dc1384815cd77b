"""write_atomic: the file holds the old content or all of the new, and a failed write leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from shard_format import atomic
from shard_format.atomic import write_atomic


def test_text_is_written_as_utf8_and_bytes_as_given(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    assert write_atomic(path, "défaut ✓\n") == path
    assert path.read_bytes() == "défaut ✓\n".encode()
    write_atomic(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}')

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(UnicodeEncodeError):  # text that is not UTF-8-encodable fails before any file is opened
        write_atomic(tmp_path / "bad.txt", "\ud800")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    monkeypatch.undo()  # the disk has room again
    write_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"new": 2}'
