"""A failing rank ends the job (issue 10, DESIGN section 7): training and evaluation on two CPU ranks.

Each test starts ``accelerate launch`` on tests/pipelines/fault_entry.py (launch/train.py or
launch/evaluate.py with a fault injected from outside the product), resuming a checkpointed 2-rank
run, and asserts that the launcher returns non-zero within 60 s of the fault, that no process of the
job is left (each carries a marker in its environment, loader workers included), and that the last
checkpoint is byte-identical to the one the job started from (the resume test shows it is usable).
The seconds from fault to launcher exit are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pipelines.base.model import read_info
from pipelines.experiments.jobs import launcher
from tests.pipelines.shard_fixtures import tiny_export, write_test_build
from tests.pipelines.training.test_train import _args, data  # noqa: F401 (data: test_train's shard fixture)

ROOT = Path(__file__).resolve().parents[3]
ENTRY = Path(__file__).parents[1] / "fault_entry.py"
LIMIT = 60.0  # seconds from the fault to the launcher's exit
pytestmark = pytest.mark.slow


class Job:
    """One ``accelerate launch`` of two ranks; its processes are found by a marker in their environment."""

    def __init__(self, tmp: Path, kind: str, args: list[str], **env: str) -> None:
        self.tag = uuid.uuid4().hex
        self.log_path = tmp / f"job-{self.tag[:8]}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [*launcher(2), str(ENTRY), kind, *args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**base, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                     "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "FAULT_TEST_TAG": self.tag, **env})

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> dict[int, dict[str, str]]:
        """pid -> {"ppid", "RANK"} of every live process of this job."""
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if f"FAULT_TEST_TAG={self.tag}".encode() in environ and stat.rsplit(")", 1)[1].split()[0] != "Z":
                rank = next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), "")
                out[int(entry.name)] = {"ppid": stat.rsplit(")", 1)[1].split()[1], "RANK": rank}
        return out

    def rank_pid(self, rank: int) -> int:
        procs = self.processes()
        return next(pid for pid, p in procs.items() if p["RANK"] == str(rank) and p["ppid"] == str(self.proc.pid))

    def loader_workers(self, rank: int) -> list[int]:
        parent = str(self.rank_pid(rank))
        return [pid for pid, p in self.processes().items() if p["ppid"] == parent]

    def wait_until(self, condition, what: str, limit: float = 180) -> None:
        deadline = time.time() + limit
        while not condition():
            assert self.proc.poll() is None, f"the job ended before {what}:\n{self.log[-4000:]}"
            assert time.time() < deadline, f"no {what} after {limit} s:\n{self.log[-4000:]}"
            time.sleep(0.2)

    def finish(self, fault_at: float) -> float:
        """Wait for the launcher; assert non-zero within LIMIT of ``fault_at`` and nothing left behind."""
        try:
            code = self.proc.wait(timeout=max(1.0, fault_at + LIMIT - time.time()))
        except subprocess.TimeoutExpired:
            for pid in self.processes():
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the launcher did not exit within {LIMIT} s of the fault:\n{self.log[-4000:]}")
        seconds = time.time() - fault_at
        assert code != 0, self.log[-4000:]
        deadline = time.time() + 10  # orphaned loader workers notice their parent's death within ~5 s
        while self.processes() and time.time() < deadline:
            time.sleep(0.2)
        assert not self.processes(), f"left behind: {self.processes()}"
        print(f"\n{self.log_path.name}: launcher exit {code}, {seconds:.1f} s after the fault")
        return seconds


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def train_args(data: Path, run_dir: str, *extra: str) -> list[str]:  # noqa: F811
    """test_train's tiny run, with ``run_dir`` as given (relative stays relative)."""
    return [*_args(data, "unused", "train.debug_checksums=false"), f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def base(data: Path) -> Path:  # noqa: F811
    """test_train's shards, and a 2-rank run checkpointed after epoch 1 (step 4) in ``base``."""
    job = Job(data, "train", train_args(data, str(data / "base"), "train.epochs=1"))
    assert job.proc.wait(timeout=300) == 0, job.log[-4000:]
    return data


def resumed_job(base: Path, tmp: Path, name: str, **env: str) -> tuple[Job, Path, dict[str, str]]:
    """A copy of the base run, resumed for many epochs without checkpoints on the way: the only
    checkpoint is the base's, which must come out of the fault unchanged."""
    run = tmp / name
    shutil.copytree(base / "base", run)
    before = tree_digest(run / "checkpoints")
    job = Job(tmp, "train", train_args(base, str(run), "train.epochs=50", "train.ckpt_every=1000",
                                       "--resume", "auto"), **env)
    return job, run, before


def training_steps(run: Path) -> int:
    log = run / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return max([json.loads(line)["step"] for line in lines if '"train/loss"' in line] or [0])


def test_a_rank_raising_mid_step_ends_the_job_and_the_checkpoint_resumes(base: Path, tmp_path: Path) -> None:
    job, run, before = resumed_job(base, tmp_path, "raise", FAULT_RAISE="1:3")
    job.wait_until(lambda: "fault-injected" in job.log, "injected fault")
    fault_at = float(job.log.split("fault-injected ")[1].split()[0])
    job.finish(fault_at)
    assert "[rank 1]" in job.log and "injected fault in backward call 3" in job.log
    assert tree_digest(run / "checkpoints") == before
    again = Job(tmp_path, "train", train_args(base, str(run), "train.epochs=2", "--resume", "auto"))
    assert again.proc.wait(timeout=300) == 0, again.log[-4000:]
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert (state["epoch"], state["step"]) == (2, 8)  # continued from the checkpoint of epoch 1 (step 4)


def test_a_killed_rank_ends_the_job(base: Path, tmp_path: Path) -> None:
    job, run, before = resumed_job(base, tmp_path, "kill")
    job.wait_until(lambda: training_steps(run) >= 5, "training step after the resume")
    fault_at = time.time()
    os.kill(job.rank_pid(1), signal.SIGKILL)
    job.finish(fault_at)
    assert tree_digest(run / "checkpoints") == before


def test_a_killed_loader_worker_ends_the_job(base: Path, tmp_path: Path) -> None:
    job, run, before = resumed_job(base, tmp_path, "worker")
    job.wait_until(lambda: training_steps(run) >= 5 and job.loader_workers(1), "loader worker in training")
    fault_at = time.time()
    os.kill(job.loader_workers(1)[0], signal.SIGKILL)
    job.finish(fault_at)
    assert "DataLoader worker" in job.log
    assert tree_digest(run / "checkpoints") == before


def test_a_run_dir_unwritable_on_one_rank_ends_the_job(base: Path, tmp_path: Path) -> None:
    """run.dir is relative and each rank runs in its own folder: rank 0's ``run`` is a file."""
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / "run").write_text("not a directory")
    shutil.copytree(base / "base", tmp_path / "rank1" / "run")
    before = tree_digest(tmp_path / "rank1" / "run" / "checkpoints")
    started = time.time()
    job = Job(tmp_path, "train", train_args(base, "run", "train.epochs=50", "--resume", "auto"),
              FAULT_CWD_0=str(tmp_path / "rank0"), FAULT_CWD_1=str(tmp_path / "rank1"))
    job.wait_until(lambda: "[rank 0] error" in job.log, "rank 0's error", limit=LIMIT * 2)
    job.finish(time.time())  # from the moment rank 0 reported it
    print(f"  ({time.time() - started:.1f} s after the launch)")
    assert "[rank 0] error: [Errno 17] run.dir is not a writable directory (File exists): 'run'" in job.log
    assert tree_digest(tmp_path / "rank1" / "run" / "checkpoints") == before


def test_sigterm_to_the_launcher_checkpoints_every_rank(base: Path, tmp_path: Path) -> None:
    """What the README says: every rank finishes its step, saves the checkpoint and exits 0; the launcher
    (torch elastic) reports the signal with status 1. The launcher signals each rank's process group:
    the loader workers must not die of it (they used to, and the ranks failed instead of stopping)."""
    job, run, _ = resumed_job(base, tmp_path, "sigterm")
    job.wait_until(lambda: training_steps(run) >= 5, "training step after the resume")
    job.proc.send_signal(signal.SIGTERM)
    assert job.proc.wait(timeout=LIMIT) == 1, job.log[-4000:]
    assert "'interrupted': True" in job.log and "DataLoader worker" not in job.log
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["step"] > 4 and state["batch_in_epoch"] > 0  # saved mid-epoch, after the base's step 4
    assert not job.processes()


def test_a_killed_rank_during_evaluation_leaves_no_metrics(base: Path, tmp_path: Path) -> None:
    build = write_test_build(tmp_path / "mvtec", "mvtec", ["bottle", "cable"], [100, 100], size=48)
    export = tiny_export(tmp_path / "run" / "export", 64)
    info = read_info(export)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"from": "an earlier evaluation"}')
    job = Job(tmp_path, "evaluate", ["--checkpoint", str(export), "--shards", str(build), "--out", str(out),
                                     "--vis", "1", "eval.batch_size=2", "eval.num_workers=1"])
    job.wait_until(lambda: "evaluate:" in job.log, "evaluation progress")
    fault_at = time.time()
    os.kill(job.rank_pid(1), signal.SIGKILL)
    job.finish(fault_at)
    assert not (out / "metrics.json").exists()  # the earlier one was set aside, none was written
    (previous,) = out.glob("previous-*")  # the earlier outputs, set aside whole
    assert json.loads((previous / "metrics.json").read_text()) == {"from": "an earlier evaluation"}
    assert read_info(export) == info  # no threshold
