"""One node's share of a SLURM job: the ``accelerate launch`` command from SLURM's environment, run with
SIGTERM forwarded to the training ranks (preemption and time limits end in a checkpoint).

launch/slurm/train.sbatch starts this once per node (srun, one task per node):

    python -m pipelines.experiments.slurm [--config_file configs/accelerate/ddp.yaml] [--processes-per-node N] \
        [--print] \
        -- --config configs/all_in_all.yaml run.dir=/shared/runs/aia [k=v ...]

- machines: SLURM_NNODES; machine rank: SLURM_NODEID; processes per node: --processes-per-node, else
  SLURM_GPUS_ON_NODE, else the count in SLURM_GPUS_PER_NODE ("8" or "h100:8"), else 1.
- main address: MAIN_ADDR (the batch script sets it to the job's first host), else SLURM_LAUNCH_NODE_IPADDR;
  port: MAIN_PORT, else 20000 + SLURM_JOB_ID mod 20000 (the same on every node, different per job).
- the training command always ends in ``--resume auto``: a requeued job continues from run.dir's checkpoint.
- SIGTERM (srun forwards the batch script's, or SLURM's own at preemption) goes to the ranks only, the
  launcher's children: they finish the step, agree, write the checkpoint and exit 0, and the launcher
  with them. Signalling the launcher instead would make it kill its ranks' process groups, data loader
  workers included, and SIGKILL them 30 s later.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.base.exits import USER_ERRORS, InputError, run_entry

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/accelerate/ddp.yaml"


class SlurmError(InputError):
    """The environment does not describe a SLURM job step this script can launch from."""


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise SlurmError(f"{name} is not set: run inside a SLURM job (sbatch launch/slurm/train.sbatch)")
    try:
        return int(value)
    except ValueError:
        raise SlurmError(f"{name}={value!r} is not an integer") from None


def processes_per_node(env: Mapping[str, str], given: int | None = None) -> int:
    """--processes-per-node, else SLURM's GPUs on this node, else 1."""
    if given:
        return given
    if env.get("SLURM_GPUS_ON_NODE"):
        return _int(env, "SLURM_GPUS_ON_NODE")
    per_node = env.get("SLURM_GPUS_PER_NODE", "")
    count = per_node.rsplit(":", 1)[-1]
    return int(count) if count.isdigit() else 1


def main_address(env: Mapping[str, str]) -> tuple[str, int]:
    """Host and port of machine rank 0's rendezvous, the same on every node of the job."""
    host = env.get("MAIN_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR")
    if not host:
        raise SlurmError("MAIN_ADDR is not set (the batch script sets it to the job's first host) "
                         "and SLURM_LAUNCH_NODE_IPADDR is missing")
    port = int(env["MAIN_PORT"]) if env.get("MAIN_PORT") else 20000 + _int(env, "SLURM_JOB_ID") % 20000
    return host, port


def launch_command(env: Mapping[str, str], train_args: Sequence[str], config_file: str = DEFAULT_CONFIG,
                   per_node: int | None = None, python: str = sys.executable) -> list[str]:
    """The ``accelerate launch`` command of this node."""
    machines, rank = _int(env, "SLURM_NNODES"), _int(env, "SLURM_NODEID")
    if not 0 <= rank < machines:
        raise SlurmError(f"SLURM_NODEID={rank} is outside 0..{machines - 1} (SLURM_NNODES={machines})")
    procs = processes_per_node(env, per_node)
    host, port = main_address(env)
    args = list(train_args)
    if "--resume" not in args:
        args += ["--resume", "auto"]
    return [python, "-m", "accelerate.commands.launch", "--config_file", config_file,
            "--num_machines", str(machines), "--num_processes", str(machines * procs),
            "--machine_rank", str(rank), "--main_process_ip", host, "--main_process_port", str(port),
            str(ROOT / "launch" / "train.py"), *args]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the launcher's ranks), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
    return out


def run(command: list[str]) -> int:
    """Run the launcher; SIGTERM / SIGINT here go to its ranks (see module docstring). Returns its exit code."""
    launcher = subprocess.Popen(command, cwd=ROOT)

    def forward(signum: int, _frame: object) -> None:
        ranks = _children(launcher.pid)
        print(f"slurm: signal {signum} forwarded to the ranks {ranks}", file=sys.stderr, flush=True)
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return launcher.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", default=DEFAULT_CONFIG, help="accelerate config (DDP or DeepSpeed)")
    parser.add_argument("--processes-per-node", type=int, default=None)
    parser.add_argument("--print", action="store_true", help="print the launch command instead of running it")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then launch/train.py's arguments")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    def body() -> int:
        command = launch_command(os.environ, train_args, args.config_file, args.processes_per_node)
        print(shlex.join(command), flush=True)
        return 0 if args.print else run(command)

    return run_entry(body, USER_ERRORS)  # a SlurmError (an InputError) is one line, status 2


if __name__ == "__main__":
    sys.exit(main())
