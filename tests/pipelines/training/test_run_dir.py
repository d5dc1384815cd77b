"""One launch per run.dir, and a fresh training never destroys a run (issue 21, item 5)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.base.exits import InputError
from pipelines.experiments.jobs import launcher
from pipelines.training.checkpoint import RUN_LOCK, claim_run_dir
from tests.pipelines.train_fixtures import toy_training_dir
from tests.pipelines.training.test_train import _args, _env

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable


def _finished_run(run: Path) -> None:
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "train_state.json").write_text("{}")
    (run / "export").mkdir()
    (run / "export" / "model.safetensors").write_bytes(b"weights")
    (run / "log.jsonl").write_text('{"step": 1}\n')


def test_a_dir_with_only_class_subsets_or_a_lock_is_not_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "data" / "toy-123").mkdir(parents=True)
    (run / RUN_LOCK).write_text("")
    with claim_run_dir(run, "", False):
        pass
    assert sorted(p.name for p in run.iterdir()) == [RUN_LOCK, "data"]


def test_a_fresh_start_over_a_run_is_refused_unless_told(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _finished_run(run)
    with pytest.raises(InputError, match=r"holds a run \(checkpoints, export, log.jsonl\): continue it with "
                                         r"--resume auto, start over with --overwrite"):
        with claim_run_dir(run, "", False):
            pass
    assert (run / "export" / "model.safetensors").read_bytes() == b"weights"
    with claim_run_dir(run, "auto", False):  # continues: nothing moves
        assert (run / "export" / "model.safetensors").is_file()
    with claim_run_dir(run, "", True):
        assert not (run / "export").exists() and not (run / "log.jsonl").exists()
    previous = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(previous) == 1 and (previous[0] / "export" / "model.safetensors").read_bytes() == b"weights"
    assert (previous[0] / "checkpoints" / "last" / "train_state.json").is_file()


def test_resume_auto_without_a_checkpoint_sets_an_unfinished_run_aside(tmp_path: Path) -> None:
    """A run killed before its first checkpoint (jobs rerun such dirs with --resume auto): its outputs move
    aside, so the new run's log and exports do not mix with them."""
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model.safetensors").write_bytes(b"half")
    (run / "log.jsonl").write_text("{}\n")
    with claim_run_dir(run, "auto", False):
        assert not (run / "log.jsonl").exists()
    (previous,) = run.glob("previous-*")
    assert (previous / "export" / "model.safetensors").read_bytes() == b"half"


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [PY, "-c", "import time; from pipelines.training.checkpoint import claim_run_dir\n"
         f"with claim_run_dir({str(run)!r}, '', False):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"run.dir={run} is in use by another training \(pid {holder.pid} on "):
            with claim_run_dir(run, "auto", False):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_run_dir(run, "auto", False):  # killed: the kernel released its lock
        pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_second_launch_into_a_training_run_dir_stops_and_a_finished_run_is_kept(tmp_path: Path) -> None:
    """Two `accelerate launch`es (one process each) into one run.dir: the second stops naming the first and
    writes nothing; then a fresh start over the finished run is refused, and --overwrite sets it aside."""
    data = toy_training_dir(tmp_path)
    run = data / "r"
    first = subprocess.Popen([*launcher(1), "launch/train.py", *_args(data, "r", "train.epochs=100")], cwd=ROOT,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    log = run / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    try:
        second = subprocess.run([*launcher(1), "launch/train.py", *_args(data, "r", "train.epochs=1")], cwd=ROOT,
                                env=_env(), capture_output=True, text=True, timeout=180)
        assert second.returncode != 0
        assert f"error: run.dir={run} is in use by another training (pid " in second.stderr, second.stderr[-3000:]
        assert first.poll() is None  # the first goes on
    finally:
        # to the process group, as a shell or a scheduler signals a job: accelerate's one-process launcher does
        # not forward SIGTERM to its rank (it dies, and the rank would train on to its last epoch)
        os.killpg(first.pid, signal.SIGTERM) if first.poll() is None else None
        out, err = first.communicate(timeout=120)
    # accelerate launch returns 1 or dies of the SIGTERM itself, after its rank saved the checkpoint
    assert first.returncode in (0, 1, -signal.SIGTERM), err[-3000:]
    assert "'interrupted': True" in out, out[-2000:]  # stopped by the signal, not at its last epoch
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [r["step"] for r in lines if "train/loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run's log, not two interleaved
    assert not list(run.glob("previous-*"))
    ckpt = run / "checkpoints" / "last" / "model.safetensors"
    before = _sha(ckpt)

    fresh = subprocess.run([PY, "launch/train.py", *_args(data, "r")], cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=180)
    assert fresh.returncode == 2 and f"run.dir={run} holds a run (" in fresh.stderr, fresh.stderr[-3000:]
    assert _sha(ckpt) == before and not list(run.glob("previous-*"))

    over = subprocess.run([PY, "launch/train.py", *_args(data, "r", "--overwrite")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert over.returncode == 0, over.stderr[-3000:]
    (previous,) = run.glob("previous-*")
    assert _sha(previous / "checkpoints" / "last" / "model.safetensors") == before
    assert (run / "export" / "model.safetensors").is_file()
