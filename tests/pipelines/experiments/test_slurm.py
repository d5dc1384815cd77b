"""SLURM launching without SLURM: the launch command from a job's environment, two "machines" on
localhost through the same wrapper, and SIGTERM reaching the ranks so that the checkpoint is written."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.experiments.jobs import free_port
from pipelines.experiments.slurm import ROOT, SlurmError, launch_command, processes_per_node
from tests.pipelines.train_fixtures import toy_training_dir
from tests.pipelines.training.test_train import _args, _debug, _env

PY = sys.executable
JOB = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_ID": "123456", "SLURM_GPUS_ON_NODE": "8",
       "MAIN_ADDR": "node001"}


def test_the_launch_command_comes_from_the_job_environment() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MAIN_"))}
    proc = subprocess.run([PY, "-m", "pipelines.experiments.slurm", "--print", "--", "--config", "configs/mvtec.yaml",
                           "train.epochs=5"], cwd=ROOT, env={**env, **JOB}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout.strip()) == [
        PY, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
        "--num_machines", "4", "--num_processes", "32", "--machine_rank", "2",
        "--main_process_ip", "node001", "--main_process_port", str(20000 + 123456 % 20000),
        str(ROOT / "launch" / "train.py"), "--config", "configs/mvtec.yaml", "train.epochs=5", "--resume", "auto"]
    missing = subprocess.run([PY, "-m", "pipelines.experiments.slurm", "--print", "--", "--config", "x.yaml"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "SLURM_NNODES is not set" in missing.stderr


def test_processes_per_node_and_address_fallbacks() -> None:
    assert processes_per_node({"SLURM_GPUS_PER_NODE": "h100:4"}) == 4
    assert processes_per_node({"SLURM_GPUS_PER_NODE": "2"}) == 2 and processes_per_node({}) == 1
    assert processes_per_node({"SLURM_GPUS_ON_NODE": "8"}, given=3) == 3
    env = {**JOB, "MAIN_PORT": "29555", "MAIN_ADDR": "", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"}
    cmd = launch_command(env, ["--config", "c.yaml", "--resume", "runs/x"], per_node=2)
    at = cmd.index("--main_process_ip")
    assert cmd[at + 1:at + 4] == ["10.0.0.7", "--main_process_port", "29555"]
    assert cmd[-2:] == ["--resume", "runs/x"] and cmd[cmd.index("--num_processes") + 1] == "8"
    with pytest.raises(SlurmError, match="outside"):
        launch_command({**JOB, "SLURM_NODEID": "4"}, [])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_training_dir(tmp_path_factory.mktemp("slurm"))


def _node(data: Path, run: str, node: int, nodes: int, port: int, *extra: str) -> subprocess.Popen:
    """One machine's wrapper, as srun would start it on that node (1 CPU process per machine)."""
    job = {"SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node), "SLURM_JOB_ID": "1", "MAIN_ADDR": "127.0.0.1",
           "MAIN_PORT": str(port)}
    # The GPU config, run on CPU by ACCELERATE_USE_CPU (gloo); cpu_ddp_2proc.yaml's MULTI_CPU would start
    # each machine as a world of its own (both exit 0 having trained alone).
    cmd = [PY, "-m", "pipelines.experiments.slurm", "--processes-per-node", "1", "--", *_args(data, run, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(ACCELERATE_USE_CPU="1", **job), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_machines_on_one_host_train_together(data: Path) -> None:
    port = free_port()
    nodes = [_node(data, "two", n, 2, port, "train.max_steps=3") for n in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in nodes]
    for p, (out, err) in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    r0, r1 = _debug(data / "two", 0), _debug(data / "two", 1)
    assert len(r0) == len(r1) == 3 and [r["checksum"] for r in r0] == [r["checksum"] for r in r1]
    assert "'step': 3" in outputs[0][0]


@pytest.mark.slow
def test_sigterm_reaches_the_ranks_and_the_checkpoint_is_written(data: Path) -> None:
    run = data / "preempted"
    node = _node(data, "preempted", 0, 1, free_port(), "train.epochs=100")
    deadline = time.time() + 180
    log = run / "log.jsonl"
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    node.send_signal(signal.SIGTERM)  # what srun passes on from the batch script, or SLURM at preemption
    out, err = node.communicate(timeout=180)
    assert node.returncode == 0, out[-2000:] + err[-4000:]
    assert "forwarded to the ranks" in err and "'interrupted': True" in out
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["step"] >= 2 and not state["stopped_early"]


def test_the_batch_script_starts_one_wrapper_per_node_and_passes_sigterm_on(tmp_path: Path) -> None:
    """launch/slurm/train.sbatch under stand-ins for srun and scontrol (logged, nothing trained).

    The stand-ins are exported bash functions, not files on PATH: a temporary folder may be mounted noexec
    (CI's is), where a stand-in file could not run and the script would stop at its first scontrol."""
    log = tmp_path / "log"
    scontrol = 'if [ "$1" = show ]; then printf "node007\\nnode008\\n"; else echo "scontrol $*" >> "$LOG"; fi'
    srun = ('trap \'echo "srun got TERM" >> "$LOG"; exit 0\' TERM; echo "srun MAIN_ADDR=$MAIN_ADDR $*" >> "$LOG"; '
            'while true; do sleep 0.1; done')
    env = {**os.environ, "LOG": str(log), "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[007-008]",
           "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(ROOT),
           "BASH_FUNC_scontrol%%": f"() {{ {scontrol}; }}", "BASH_FUNC_srun%%": f"() {{ {srun}; }}"}
    job = subprocess.Popen(["bash", "launch/slurm/train.sbatch", "--config", "c.yaml", "train.epochs=3"], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and job.poll() is None and not (log.is_file() and "srun" in log.read_text()):
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)  # --signal=B:TERM@300: the batch shell is told first
    out, err = job.communicate(timeout=30)
    assert log.is_file(), (job.returncode, out, err)
    lines = log.read_text().splitlines()
    assert lines[0] == ("srun MAIN_ADDR=node007 --kill-on-bad-exit=1 --ntasks-per-node=1 .venv/bin/python -m "
                        "pipelines.experiments.slurm --config_file configs/accelerate/ddp.yaml -- --config c.yaml "
                        "train.epochs=3")
    assert lines[1:] == ["srun got TERM", "scontrol requeue 42"], (lines, out, err)
