"""Builds in object storage, against a real S3 server on localhost (SeaweedFS, tests/object_store.py): upload,
verify, the readers' samples equal the local build's, a changed object is refused by name, cut connections and
503s are retried without losing or repeating a sample, the cache is shared, content-addressed and capped."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import sys
import time
from pathlib import Path

import pytest
from fsspec.asyn import sync as fsspec_sync

from shard_format import fetch
from shard_format.builds import open_builds, shard_file_problems
from shard_format.errors import ShardError
from shard_format.fetch import ShardCache, StorageError
from shard_format.location import filesystem, is_remote, join, scheme_of
from shard_format.reader import read_ranges
from shard_format.schema import SPLITS
from shard_tools.upload import upload_build
from shard_tools.verify import verify_build
from tests.object_store import FaultProxy, S3Server, env_client
from tests.pipelines.train_fixtures import write_build

SHARD = "train-000001.tar"


@pytest.fixture
def build(tmp_path: Path) -> Path:
    out = write_build(tmp_path / "toy", "toy", ["a", "b", "c"], [9, 7, 5], size=32, val_sizes=[6])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"] = {split: manifest["counts"].get(split, {}) for split in SPLITS}  # every split, as built
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify_build(out) == []
    return out


@pytest.fixture
def uploaded(build: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """``build`` uploaded to a fresh prefix, the client environment pointing at the server."""
    env_client(monkeypatch, s3_server.env())
    s3_server.make_bucket("shards")
    url = f"s3://shards/{request.node.name}/toy"
    upload_build(build, url)
    return url


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)


def samples(build: str, split: str = "train", cache: ShardCache | None = None) -> list[dict]:
    """Every sample of ``split`` through the readers, as the training and evaluation streams read them."""
    shard_set = open_builds([build], cache)
    ranges = [_Range(s.url, 0, s.samples, s.samples) for s in shard_set.shards(split)]
    out = list(read_ranges(ranges, shard_set.opener()))
    assert not [s for s in out if isinstance(s, ShardError)]
    return [{k: v for k, v in s.items() if k != "__url__"} for s in out]


class _Range:
    def __init__(self, url: str, start: int, stop: int, total: int) -> None:
        self.url, self.start, self.stop, self.total = url, start, stop, total


def test_locations_are_folders_or_the_named_schemes() -> None:
    assert scheme_of("/data/shards/mvtec") == "" and scheme_of("runs/x") == ""
    assert scheme_of("s3://b/p") == "s3" and scheme_of("gs://b/p") == "gs" and scheme_of("https://h/p") == "https"
    for bad in ("pipe:curl http://x | tar", "file:///etc", "ftp://h/p", "http://h/p", "s3:/b/p"):
        with pytest.raises(ShardError, match="not a shard location"):
            scheme_of(bad)
    assert join("s3://b/p/", "train-000000.tar") == "s3://b/p/train-000000.tar"
    assert join("/d/b", "manifest.json") == "/d/b/manifest.json" and not is_remote("/d/b")


def test_an_uploaded_build_verifies_and_reads_as_the_local_one(build: Path, uploaded: str, tmp_path: Path) -> None:
    assert verify_build(uploaded) == []
    for split in ("train", "val"):
        assert samples(uploaded, split, ShardCache(str(tmp_path / "cache"))) == samples(str(build), split)
    assert not list((tmp_path / "cache").glob("*.tar"))  # no cache asked for: nothing kept
    assert shard_file_problems(open_builds([uploaded]), ("train", "val")) == ([], [])
    with pytest.raises(ShardError, match="already holds a build"):
        upload_build(build, uploaded)


def test_a_changed_object_is_refused_by_name(build: Path, uploaded: str, s3_server: S3Server) -> None:
    url = join(uploaded, SHARD)
    data = bytearray((build / SHARD).read_bytes())
    data[700] ^= 0xFF  # same size, one byte else
    s3_server.put_object(url, bytes(data))
    assert any(url in p and "sha256" in p for p in verify_build(uploaded))
    with pytest.raises(StorageError, match=f"{url}: sha256 .* the object changed since the build"):
        samples(uploaded)  # raised, not counted as lost samples: the job ends
    s3_server.put_object(url, bytes(data[:-512]))  # and another size
    assert shard_file_problems(open_builds([uploaded]), ("train",))[1][0].startswith(f"shard {url}: ")
    with pytest.raises(StorageError, match=f"{url}: {len(data) - 512} bytes, its manifest says {len(data)}"):
        samples(uploaded)


def test_a_missing_object_ends_the_reading(uploaded: str, s3_server: S3Server) -> None:
    url = join(uploaded, SHARD)
    s3_server.fs().rm(url[len("s3://"):])
    assert shard_file_problems(open_builds([uploaded]), ("train",))[0] == [
        f"shard {url} listed in {join(uploaded, 'manifest.json')} does not exist"]
    with pytest.raises(StorageError, match=f"{url}: FileNotFoundError"):
        samples(uploaded)


def test_cut_connections_and_slowdowns_are_retried_without_losing_or_repeating_a_sample(
        build: Path, uploaded: str, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "CHUNK", 4096)  # several range requests per shard: resumed mid-object
    env_client(monkeypatch, fault_proxy.env())
    fault_proxy.cut_responses(SHARD, after=1000, count=3, how="reset")
    fault_proxy.cut_responses("train-000000.tar", after=3000, count=2, how="close")
    fault_proxy.slow_down("train-000002.tar", count=2, method="GET")
    assert samples(uploaded) == samples(str(build))
    assert fault_proxy.faults == 7


def test_a_shard_that_keeps_failing_ends_the_reading(uploaded: str, fault_proxy: FaultProxy,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "RETRIES", 2)
    env_client(monkeypatch, {**fault_proxy.env(), "AWS_MAX_ATTEMPTS": "1"})  # botocore's own retries off: seconds
    fault_proxy.slow_down(SHARD, count=1000, method="GET")
    with pytest.raises(StorageError, match=f"{join(uploaded, SHARD)}: still failing after {fetch.RETRIES} retries"):
        samples(uploaded)


def test_the_cache_is_content_addressed_and_capped(build: Path, uploaded: str, fault_proxy: FaultProxy,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_client(monkeypatch, fault_proxy.env())
    entries = {e["name"]: e for e in json.loads((build / "manifest.json").read_text())["shards"]}
    t0, t1, t2 = (f"train-00000{i}.tar" for i in range(3))
    cache = ShardCache(str(tmp_path / "cache"), max_bytes=entries[t0]["bytes"] + entries[t1]["bytes"])
    opener = open_builds([uploaded], cache).opener()

    def read(name: str) -> int:
        """Open a shard through the cache; returns the GET requests it cost."""
        before = fault_proxy.count("GET", name)
        with opener(join(uploaded, name)) as f:
            assert f.read() == (build / name).read_bytes()
        return fault_proxy.count("GET", name) - before

    def kept() -> set[str]:
        return {p.name for p in (tmp_path / "cache").glob("*.tar")}

    assert read(t1) == 1 and read(t2) == 1 and read(t1) == 0  # kept: not fetched again
    assert kept() == {f"{entries[n]['sha256']}.tar" for n in (t1, t2)}
    assert read(t0) == 1  # over the cap: the least recently used (t2) goes
    assert kept() == {f"{entries[n]['sha256']}.tar" for n in (t0, t1)}
    assert samples(uploaded, "train", cache) == samples(str(build))


def test_ranks_of_a_node_fetch_a_shard_once(build: Path, uploaded: str, fault_proxy: FaultProxy,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_client(monkeypatch, fault_proxy.env())
    cache = ShardCache(str(tmp_path / "cache"), max_bytes=1 << 30)
    opener = open_builds([uploaded], cache).opener()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        digests = pool.map(_digest_of, [(opener, join(uploaded, SHARD))] * 3)
    assert digests == [hashlib.sha256((build / SHARD).read_bytes()).hexdigest()] * 3
    assert fault_proxy.count("GET", SHARD) == 1


def _digest_of(args: tuple) -> str:
    opener, url = args
    with opener(url) as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_forked_worker_never_closes_the_client_it_inherited(uploaded: str, capfd: pytest.CaptureFixture) -> None:
    """A loader worker is forked from a process that already read the build. Collected in the worker (here on the
    worker's own fsspec I/O thread, where a collection can happen to run), the inherited client would close the
    parent's session on the wrong event loop and log a traceback, which once broke a training's one-line error."""
    manifest = join(uploaded, "manifest.json")
    filesystem(manifest).cat_file(manifest)
    worker = multiprocessing.get_context("fork").Process(target=_read_and_collect, args=(manifest,))
    worker.start()
    worker.join(60)
    err = capfd.readouterr().err
    assert worker.exitcode == 0, err[-3000:]
    assert "Traceback" not in err and "different loop" not in err, err[-3000:]


def _read_and_collect(url: str) -> None:
    logging.getLogger("asyncio").addHandler(logging.StreamHandler(sys.stderr))  # not pytest's, inherited: in memory
    fs = filesystem(url)  # fsspec's cache, emptied after the fork: the worker's own client
    fs.cat_file(url)

    async def collect() -> None:
        gc.collect()

    fsspec_sync(fs.loop, collect)
    for _ in range(3):  # a failed close task is only logged when it is collected itself
        gc.collect()
        time.sleep(0.1)


def test_a_pseudo_class_sidecar_is_written_beside_a_remote_build_and_read_back(uploaded: str) -> None:
    from pipelines.data.labels import load_labels
    from shard_tools.pseudo_classes import write_sidecars

    shard_set = open_builds([uploaded])
    keys = [s["__key__"] for s in samples(uploaded)]
    result = {"k": 2, "labels": {key: i % 2 for i, key in enumerate(keys)}, "build_of": dict.fromkeys(keys, uploaded)}
    assert write_sidecars(result, [uploaded]) == [join(uploaded, "pseudo_classes.json")]
    labels = load_labels(shard_set, "pseudo")
    assert labels.num_classes == 2 and labels.pseudo == result["labels"]
    with pytest.raises(ShardError, match=f"{join(uploaded, 'other.json')} does not exist"):
        load_labels(shard_set, "pseudo", "other.json")
