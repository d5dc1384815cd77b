"""The object-store test fixtures against s3fs: a real SeaweedFS S3 server reached through the environment alone, and
a fault proxy whose cut bodies and 503s show what s3fs retries and what it raises.

The retry counts pinned here are s3fs 2026.9 / aiobotocore 3.10 / botocore 1.43 behaviour (s3fs's own loop: 5 tries;
botocore's legacy mode: 5 attempts per call); a change in either shows up as a failure here first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import s3fs
from botocore.exceptions import EndpointConnectionError

from tests.object_store import (  # noqa: F401 - fault_proxy_fixture, s3_server_fixture: the fixtures
    FaultProxy,
    S3Server,
    client_env,
    env_client,
    fault_proxy_fixture,
    free_port,
    s3_server_fixture,
    why_no_s3,
)

BLOB = os.urandom(200_000)  # several TCP segments: a cut after 1000 bytes is mid-object


@pytest.fixture(scope="module")
def blob(s3_server: S3Server) -> str:
    """A 200 kB object on the server, read by the fault tests."""
    s3_server.make_bucket("faults")
    s3_server.put_object("s3://faults/data/blob.bin", BLOB)
    return "faults/data/blob.bin"


@pytest.fixture(autouse=True)
def _no_retry_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # the counts below are for botocore's defaults; a developer's AWS_MAX_ATTEMPTS / AWS_RETRY_MODE would change them
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.bin": os.urandom(1000),
        "sub/b.tar": os.urandom(70_000),
        "sub/deeper/c.json": b'{"x": 1}',
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


# -- the server ----------------------------------------------------------------------------------------------------


def test_server_is_up_and_started_in_time(s3_server: S3Server) -> None:
    assert why_no_s3() is None
    assert s3_server.proc is not None and s3_server.proc.poll() is None
    assert s3_server.start_seconds is not None and s3_server.start_seconds < 30
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    print(f"\nSeaweedFS S3 ready in {s3_server.start_seconds:.2f} s: {' '.join(s3_server.command)}")


def test_upload_list_and_read_back_through_the_environment_alone(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _tree(tmp_path / "src")
    uploaded = s3_server.upload_dir(tmp_path / "src", "s3://roundtrip/run-1/")
    assert sorted(uploaded) == sorted(f"roundtrip/run-1/{rel}" for rel in files)

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()  # no endpoint, no keys: AWS_ENDPOINT_URL & co. only

    assert sorted(fs.find("roundtrip/run-1")) == sorted(uploaded)
    assert fs.ls("roundtrip/run-1/sub/deeper", detail=False) == ["roundtrip/run-1/sub/deeper/c.json"]
    for rel, data in files.items():
        assert fs.cat_file(f"roundtrip/run-1/{rel}") == data, rel
        with fs.open(f"roundtrip/run-1/{rel}", "rb") as f:
            assert f.read() == data, rel
    assert fs.info("roundtrip/run-1/sub/b.tar")["size"] == len(files["sub/b.tar"])
    # the client botocore built took its endpoint from AWS_ENDPOINT_URL: the local server, not AWS
    assert fs.s3.meta.endpoint_url == s3_server.endpoint


def test_the_environment_is_what_steers_the_client(
    s3_server: S3Server, fault_proxy: FaultProxy, blob: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = env_client(monkeypatch, fault_proxy.env())
    assert fs.cat_file(blob) == BLOB
    assert fault_proxy.count("GET", "/" + blob) == 1  # the request really went to the endpoint named in the env
    assert fs.s3.meta.endpoint_url == fault_proxy.endpoint


def test_why_no_s3_names_the_reason(tmp_path: Path) -> None:
    assert "not found" in (why_no_s3(tmp_path / "no-such-weed") or "")
    plain = tmp_path / "weed-not-executable"
    plain.write_text("#!/bin/sh\nexit 0\n")
    assert "not executable" in (why_no_s3(plain) or "")
    dies = tmp_path / "weed-that-dies"
    dies.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    dies.chmod(dies.stat().st_mode | stat.S_IXUSR)
    reason = why_no_s3(dies) or ""
    assert "does not start" in reason and "exited with 3" in reason and "cannot start" in reason


# -- s3fs through the fault proxy ----------------------------------------------------------------------------------


def _read(fs: s3fs.S3FileSystem, path: str, how: str, tmp_path: Path) -> bytes:
    if how == "cat_file":  # one GET of the whole object (after a HEAD for its size)
        return fs.cat_file(path)
    if how == "open":  # S3File: ranged GETs of blocks
        with fs.open(path, "rb", cache_type="none") as f:
            return f.read()
    fs.get_file(path, str(tmp_path / "got"))  # streamed to a local file; a retry resumes with a Range
    return (tmp_path / "got").read_bytes()


@pytest.mark.parametrize("cut", ["reset", "close"])
@pytest.mark.parametrize("how", ["cat_file", "open", "get_file"])
def test_a_cut_body_is_retried_by_s3fs(
    fault_proxy: FaultProxy, blob: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str, cut: str
) -> None:
    fs = env_client(monkeypatch, fault_proxy.env())
    fault_proxy.cut_responses("/" + blob, after=1000, how=cut)
    assert _read(fs, blob, how, tmp_path) == BLOB
    assert fault_proxy.faults == 1
    gets = [r for r in fault_proxy.requests if r.method == "GET" and r.target.startswith("/" + blob)]
    assert [r.fault for r in gets] == [f"cut@1000/{cut}", None]  # exactly one retry, which got the whole rest


def test_one_503_slowdown_is_retried(fault_proxy: FaultProxy, blob: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = env_client(monkeypatch, fault_proxy.env())
    fault_proxy.slow_down("/" + blob, method="GET")
    assert fs.cat_file(blob) == BLOB
    assert fault_proxy.faults == 1 and fault_proxy.count("GET", "/" + blob) == 2


def test_missing_object_and_missing_bucket_raise_file_not_found(
    s3_server: S3Server, blob: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = env_client(monkeypatch, s3_server.env())
    with pytest.raises(FileNotFoundError):
        fs.cat_file("faults/data/no-such-object")
    with pytest.raises(FileNotFoundError):
        fs.open("faults/data/no-such-object", "rb")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.cat_file("no-such-bucket/x")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.ls("no-such-bucket")


def test_a_refused_connection_raises_endpoint_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # one attempt (AWS_MAX_ATTEMPTS=1) keeps this fast; with defaults botocore retries the connect with backoff
    # first (seconds) and raises the same class; s3fs does not retry it
    fs = env_client(monkeypatch, {**client_env(f"http://127.0.0.1:{free_port()}"), "AWS_MAX_ATTEMPTS": "1"})
    with pytest.raises(EndpointConnectionError) as err:
        fs.cat_file("any-bucket/any-key")
    assert not isinstance(err.value, OSError)

