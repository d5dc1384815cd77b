"""A silent peer and SIGTERM in a blocked collective (issue 10), on two forked gloo ranks.

Rank 1 goes silent (sleeps) while rank 0 waits for it in a collective of pipelines.base.distributed:
- with ``train.collective_timeout`` seconds, rank 0's collective fails and the entry-point error path
  (``run_entry``) ends the process at once with status 1;
- with a long timeout, SIGTERM to rank 0 ends it within ``train.sigterm_grace`` seconds (status 143),
  although its Python handler cannot run while the collective blocks; a rank that can run Python
  takes the graceful path instead and is not killed.

As in test_train_exit.py the ranks are forked from a parent that imported torch once (seconds instead
of a launcher's start-up); each scenario reports "name status seconds" lines on stdout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow  # two forked gloo ranks per scenario


def _scenario(name: str) -> dict[str, tuple[int, float]]:
    proc = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("result ")]
    return {r[1]: (int(r[2]), float(r[3])) for r in rows}


def test_a_silent_peer_fails_the_collective_after_the_timeout() -> None:
    got = _scenario("timeout")
    status, seconds = got["rank0"]
    assert status == 1 and 2.5 <= seconds < 15, got  # collective_timeout=3 s, then out at once


def test_sigterm_ends_a_rank_blocked_in_a_collective_within_the_grace() -> None:
    got = _scenario("sigterm")
    status, seconds = got["blocked"]
    assert status == 128 + signal.SIGTERM and seconds < 2 + 8, got  # sigterm_grace=2 s (collective_timeout: 120 s)
    assert got["responsive"] == (0, got["responsive"][1])  # handled SIGTERM in Python: stopped on its own, status 0


# ---------------------------------------------------------------- the forked ranks


def _fork_rank(rank: int, port: int, body) -> int:
    pid = os.fork()
    if pid == 0:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1")
        try:
            body(rank)
        finally:
            os._exit(0)
    return pid


def _accelerator(timeout: float):
    from pipelines.base.collectives import sum_over_ranks
    from pipelines.base.config import load_config
    from pipelines.base.distributed import make_accelerator

    acc = make_accelerator(load_config(None, [f"train.collective_timeout={timeout}"]))
    sum_over_ranks(acc, [1.0])  # both ranks are up
    return acc


def _wait(pid: int, limit: float) -> tuple[int, float]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9, time.monotonic() - start


def _timeout_scenario() -> None:
    from pipelines.base.collectives import sum_over_ranks
    from pipelines.base.exits import run_entry

    ready_r, ready_w = os.pipe()

    def rank_body(rank: int) -> None:
        acc = _accelerator(3)
        if rank == 1:
            time.sleep(60)  # alive but silent
        os.write(ready_w, b"x")
        run_entry(lambda: int(sum_over_ranks(acc, [2.0])[0]), ())  # blocks on the silent peer, then the error path

    pids = [_fork_rank(r, PORT, rank_body) for r in range(2)]
    os.read(ready_r, 1)
    code, seconds = _wait(pids[0], 60)
    print(f"result rank0 {code} {seconds:.2f}", flush=True)
    os.kill(pids[1], signal.SIGKILL)
    os.waitpid(pids[1], 0)


def _sigterm_scenario() -> None:
    from pipelines.base.collectives import sum_over_ranks
    from pipelines.training.sigterm import StopRequest

    ready_r, ready_w = os.pipe()

    def rank_body(rank: int) -> None:
        acc = _accelerator(120)
        stop = StopRequest(grace=2)
        if rank == 0:
            os.write(ready_w, b"0")
            sum_over_ranks(acc, [2.0])  # rank 1 never joins: blocked in native code, the handler cannot run
            return
        os.write(ready_w, b"1")
        deadline = time.monotonic() + 30
        while not stop.requested and time.monotonic() < deadline:  # busy in Python: the handler runs
            sum(range(1000))
        time.sleep(3)  # longer than the grace: the watchdog must leave a responsive rank alone
        os._exit(0 if stop.requested else 5)

    pids = [_fork_rank(r, PORT, rank_body) for r in range(2)]
    assert sorted(os.read(ready_r, 1) + os.read(ready_r, 1)) == [ord("0"), ord("1")]
    time.sleep(1.0)  # rank 0 is inside the collective
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for name, pid in (("blocked", pids[0]), ("responsive", pids[1])):
        code, seconds = _wait(pid, 60)
        print(f"result {name} {code} {seconds:.2f}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import accelerate  # noqa: F401  (imported once, before forking)
    import torch  # noqa: F401

    import pipelines.base.distributed  # noqa: F401
    from pipelines.experiments.jobs import free_port

    PORT = free_port()
    {"timeout": _timeout_scenario, "sigterm": _sigterm_scenario}[sys.argv[1]]()
