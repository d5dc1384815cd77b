"""The shard reader: sample ranges, what a short, missing or corrupt shard loses, refused members and URLs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shard_format.errors import ERROR_KEY, LostSamples, ShardError
from shard_format.reader import iter_range
from shard_format.record import decode_record
from tests.pipelines.train_fixtures import write_build


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_build(tmp_path_factory.mktemp("uneven"), "toy", ["a", "b", "c", "d", "e"], [23, 7, 41, 3, 30], size=16)


def test_ranges_match_a_full_read(build: Path) -> None:
    url = str(build / "train-000002.tar")
    full = [s["__key__"] for s in iter_range(url)]
    assert [s["__key__"] for s in iter_range(url, 10, 17)] == full[10:17]


def test_counts_what_a_short_or_missing_shard_loses(build: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.tar"
    short.write_bytes((build / "train-000002.tar").read_bytes())
    got = []
    with pytest.raises(LostSamples) as err:  # the shard holds 41 samples, the plan reads 30..50
        for sample in iter_range(str(short), 30, 50):
            got.append(sample["__key__"])
    assert len(got) == 11 and err.value.lost == 9
    with pytest.raises(LostSamples, match="does not exist") as err:
        list(iter_range(str(tmp_path / "gone.tar"), 5, 9))
    assert err.value.lost == 4


def test_never_runs_a_pipe_url(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(LostSamples, match="does not exist"):
        list(iter_range(f"pipe:touch {marker}", 0, 1))
    assert not marker.exists()


def test_oversized_members_are_refused_unread(tmp_path: Path) -> None:
    """A member that declares more than its kind's cap marks its sample; the reader never allocates it."""
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, size in (("x/a.json", 10), ("x/a.png", 10), ("y/b.json", (1 << 20) + 1), ("y/b.png", 10)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"{" * size))
    first, second = iter_range(str(path), 0, 2)
    assert ERROR_KEY not in first and ERROR_KEY in second and "json" not in second
    assert "over the 1048576-byte limit for .json members" in second[ERROR_KEY]
    with pytest.raises(ShardError, match="over the 1048576-byte limit"):
        decode_record(second)
    # a header that declares 1 TiB in a 1.5 KB file: no MemoryError, the sample is counted as lost
    header = tarfile.TarInfo("z/c.png")
    header.size = 1 << 40
    fake = tmp_path / "tib.tar"
    fake.write_bytes(header.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    with pytest.raises(LostSamples, match="corrupt or truncated") as err:
        list(iter_range(str(fake), 0, 1))
    assert err.value.lost == 1


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_many_members_under_one_key_are_refused_and_unused_ones_never_read(tmp_path: Path, monkeypatch) -> None:
    """Thousands of members under one key mark the sample (nothing of it kept); members no record uses are
    noted by extension and never read."""
    from shard_format.schema import MAX_MEMBERS_PER_SAMPLE

    path = tmp_path / "many.tar"
    _tar(path, [("x/a.json", b"{}"), ("x/a.extra.bin", b"0" * 1000), ("x/a.png", b"p")]
         + [("y/b.json", b"{}")] + [(f"y/b.{i}.bin", b"0" * 1000) for i in range(3000)] + [("z/c.json", b"{}")])
    read = []
    original = tarfile.TarFile.extractfile

    def counting(self, member):
        read.append(member.name)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", counting)
    first, second, third = iter_range(str(path), 0, 3)
    assert first["__unread__"] == ["extra.bin"] and "extra.bin" not in first and first["png"] == b"p"
    assert f"y/b: more than {MAX_MEMBERS_PER_SAMPLE} members under one key" in second[ERROR_KEY]
    assert "json" not in second and "__unread__" not in second and ERROR_KEY not in third
    assert read == ["x/a.json", "x/a.png", "y/b.json", "z/c.json"]  # no .bin member was ever read
    with pytest.raises(ShardError, match="more than 16 members"):
        decode_record(second)


def test_sparse_members_are_refused_at_their_logical_size(tmp_path: Path) -> None:
    """A GNU sparse member (old-style header, type 'S') claims a logical size far above its bytes in the shard."""
    sparse = tarfile.TarInfo("s/a.png")
    sparse.type = tarfile.GNUTYPE_SPARSE
    sparse.size = 512
    buf = bytearray(sparse.tobuf(format=tarfile.GNU_FORMAT))
    # GNU sparse header: one map entry (offset 0, 512 bytes) at 386, isextended at 482, real size at 483
    buf[386:398], buf[398:410] = b"%011o\0" % 0, b"%011o\0" % 512
    buf[483:495] = b"%011o\0" % (1 << 20)
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    json_info = tarfile.TarInfo("s/a.json")
    json_info.size = 2
    data = bytes(buf) + b"\x89" * 512 + json_info.tobuf(format=tarfile.GNU_FORMAT) + b"{}".ljust(512, b"\0")
    path = tmp_path / "sparse.tar"
    path.write_bytes(data + bytes(1024))
    with tarfile.open(path) as tar:
        assert tar.getmembers()[0].issparse() and tar.getmembers()[0].size == 1 << 20  # the logical size
    (sample,) = iter_range(str(path), 0, 1)
    assert "sparse member of 1048576 bytes (logical size): refused" in sample[ERROR_KEY]
    assert "png" not in sample and "json" not in sample
