"""Clean exit: consecutive 2-process gloo runs end with status 0 (no "terminate called" abort, DESIGN 7).

torch 2.14 + gloo aborts at interpreter exit in about one run in four unless the prepared objects
are freed first. Each run here is two fresh processes that build the Accelerator, prepare a small
model with BatchNorm (DDP), take an optimizer step and leave through ``pipelines.base.distributed.shutdown``
(the exit path of every entry point), then let the interpreter finalise normally. To keep 20 runs
short the processes are forked from a parent that imported torch and accelerate once (a
fork runs the same interpreter finalisation as a fresh process); test_train.py launches full
``accelerate launch`` runs as well.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
RUNS = 20


@pytest.mark.slow
def test_twenty_two_process_runs_exit_cleanly() -> None:
    proc = subprocess.run([sys.executable, __file__, str(RUNS)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    statuses = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("run")]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(statuses) == RUNS and all(s == ["0", "0"] for s in statuses), statuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_rank() -> None:
    """Child: one rank of a 2-process DDP run, leaving through the entry points' shutdown."""
    import torch

    from pipelines.base.config import Config
    from pipelines.base.distributed import make_accelerator, shutdown

    accelerator = make_accelerator(Config())
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(model(torch.randn(2, 3, 8, 8)).mean())
    optimizer.step()
    del model, optimizer
    shutdown(accelerator)


def _zygote(runs: int) -> int:
    sys.path.insert(0, str(ROOT))
    import accelerate  # noqa: F401  (imported once, before forking)
    import torch  # noqa: F401

    import pipelines.base.distributed  # noqa: F401

    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # its first use imports torch._dynamo (seconds)
    gc.freeze()  # the children's collections skip the imported modules' objects
    failed = 0
    for _ in range(runs):
        port, pids = _free_port(), []
        for rank in range(2):
            pid = os.fork()
            if pid == 0:
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1",
                                  OMP_NUM_THREADS="1")
                _one_rank()
                sys.exit(0)  # normal interpreter finalisation, where the gloo abort would happen
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        failed += any(codes)
        print(f"run {codes[0]} {codes[1]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_zygote(int(sys.argv[1])))
