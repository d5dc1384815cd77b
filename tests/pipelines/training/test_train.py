"""The trainer end to end on CPU: 2-process DDP and DeepSpeed ZeRO-2 against one process, resume,
SIGTERM, W&B offline output, NaN abort and bad inputs. Tiny shards, resnet18 without weights, 64 px."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.experiments.jobs import launcher
from tests.pipelines.shard_fixtures import write_test_build
from tests.pipelines.train_fixtures import class_image, write_build

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_build(root / "shards", "toy", ["a", "b", "c", "d"], [20, 12], size=64, val_sizes=[10])
    (root / "empty.yaml").write_text("{}\n")
    return root


def _args(data: Path, run: str, *extra: str) -> list[str]:
    return ["--config", str(data / "empty.yaml"), f"data.shards=[{data / 'shards'}]", f"run.dir={data / run}",
            "model.teacher=resnet18", "model.pretrained=none", "data.image_size=64", "data.batch_size=8",
            "data.classes_per_batch=4", "train.epochs=1", "train.log_every=1", "data.num_workers=1",
            "tracking.wandb.mode=disabled", "train.debug_checksums=true", "data.plan_ranks=2",
            "train.progress=false", "tracking.vis_every=0", "eval.batch_size=8", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _run(cmd: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _one(data: Path, run: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [PY, "launch/train.py", *_args(data, run, *extra)]
    if check:
        return _run(cmd, _env())
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)


def _two(data: Path, run: str, *extra: str, deepspeed: bool = False) -> None:
    if deepspeed:  # gloo via InitProcessGroupKwargs, WITHOUT ACCELERATE_USE_CPU (DESIGN section 7)
        launch = launcher(2, config_file="configs/accelerate/deepspeed_zero2.yaml")
        env = _env()
    else:
        launch = launcher(2)
        env = _env(ACCELERATE_USE_CPU="1")
    _run([*launch, "launch/train.py", *_args(data, run, *extra)], env)


def _losses(run_dir: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r:
            out[r["step"]] = {k: r[f"train/{k}"] for k in ("loss", "kd", "lcl", "gcl")}
    return out


def _debug(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "debug" / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(data: Path) -> Path:
    """One process, two epochs, W&B offline with heatmaps and t-SNE: the run the others are compared with."""
    _one(data, "one", "train.epochs=2", "tracking.wandb.mode=offline", "tracking.vis_every=1",
         "tracking.vis_images=3")
    return data / "one"


def _assert_same_losses(a: dict, b: dict, steps: list[int]) -> None:
    # Step 1 is the same forward up to float summation order; step 2 shows that the first update (from the
    # averaged gradients) is the same. Adam's first update is lr * sign(gradient), so float32 summation noise
    # in near-zero gradients becomes whole lr-sized steps and later steps drift apart (measured at step 2:
    # 4e-4 with the neck on both views in one batch, 1.1e-3 with one batch per view; steps 3-4: 3e-3 to 5e-2).
    # The exact equality of loss and gradients is shown in float64 by tests/pipelines/base/test_distributed_model.py.
    for step in steps:
        tol = {1: 1e-5, 2: 5e-3}.get(step, 1e-1)
        for k in ("loss", "kd", "lcl", "gcl"):
            assert a[step][k] == pytest.approx(b[step][k], rel=tol, abs=1e-5), (step, k, a[step], b[step])


def test_ddp_two_processes_match_one_process_and_ranks_agree(data: Path, reference: Path) -> None:
    _two(data, "ddp")
    r0, r1 = _debug(data / "ddp", 0), _debug(data / "ddp", 1)
    assert len(r0) == len(r1) == 4  # 32 samples / 8 per step, the same number of steps on both ranks
    assert [r["checksum"] for r in r0] == [r["checksum"] for r in r1]  # identical parameters after each step
    assert len({r["checksum"] for r in r0}) == 4  # and they change
    assert [r["keys"] for r in _debug(reference, 0)[:4]] == [a["keys"] + b["keys"] for a, b in zip(r0, r1)]
    _assert_same_losses(_losses(data / "ddp"), _losses(reference), [1, 2, 3, 4])
    assert (data / "ddp" / "export" / "model.safetensors").is_file()


def test_deepspeed_zero2_two_processes_match_ddp(data: Path, reference: Path) -> None:
    _two(data, "ds", deepspeed=True)
    r0, r1 = _debug(data / "ds", 0), _debug(data / "ds", 1)
    assert len(r0) == len(r1) == 4 and [r["checksum"] for r in r0] == [r["checksum"] for r in r1]
    _assert_same_losses(_losses(data / "ds"), _losses(reference), [1, 2, 3, 4])
    assert (data / "ds" / "checkpoints" / "last" / "pytorch_model").is_dir()  # DeepSpeed's own checkpoint
    assert (data / "ds" / "export" / "model.safetensors").is_file()


def test_resume_after_epoch_one_and_mid_epoch_gives_the_same_losses(data: Path, reference: Path) -> None:
    _one(data, "resumed", "train.epochs=1")
    state = json.loads((data / "resumed" / "checkpoints" / "last" / "train_state.json").read_text())
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 4, 0)
    _one(data, "resumed", "train.epochs=2", "train.max_steps=6", "--resume", str(data / "resumed"))
    state = json.loads((data / "resumed" / "checkpoints" / "last" / "train_state.json").read_text())
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 6, 2)  # stopped mid-epoch
    _one(data, "resumed", "train.epochs=2", "--resume", "auto")
    got, want = _losses(data / "resumed"), _losses(reference)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):  # one process on CPU is deterministic: exactly the same numbers
        assert got[step] == want[step], step


def test_wandb_offline_run_holds_scalars_heatmaps_and_tsne(reference: Path) -> None:
    runs = list((reference / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = [p.name for p in runs[0].rglob("*.png")]
    assert any(n.startswith("heatmaps") for n in images) and any(n.startswith("tsne") for n in images)
    log = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    keys = set().union(*log)
    assert {"train/kd", "train/lcl", "train/gcl", "train/loss", "lr/projector", "lr/rest", "perf/samples_per_s",
            "perf/data_wait", "val/loss", "val/v_measure"} <= keys
    info = json.loads((reference / "export" / "info.json").read_text())
    assert info["class_index"] == {"toy/a": 0, "toy/b": 1, "toy/c": 2, "toy/d": 3} and info["datasets"] == ["toy"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data: Path) -> None:
    run = data / "sigterm"
    proc = subprocess.Popen([PY, "launch/train.py", *_args(data, "sigterm", "train.epochs=100")], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = run / "log.jsonl"
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "'interrupted': True" in out
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["step"] >= 2 and state["batch_in_epoch"] >= 2 and not state["stopped_early"]


def test_nan_losses_abort_and_keep_the_last_good_checkpoint(data: Path, reference: Path) -> None:
    run = data / "nan"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    before = (run / "checkpoints" / "last" / "train_state.json").read_text()
    # a float32 loss times 1e39 is inf at every step (loss.temperature=0 did this; it is refused at load now)
    proc = _one(data, "nan", "train.epochs=3", "loss.lambda_global=1.0e+39", "train.nan_tolerance=2", "--resume",
                "auto", check=False)
    assert proc.returncode == 2 and "non-finite losses in a row" in proc.stderr
    assert (run / "checkpoints" / "last" / "train_state.json").read_text() == before


@pytest.mark.parametrize("override, message", [
    ("data.shards=[/nonexistent/build]", "does not exist"),
    ("run.dir=/dev/null/run", "run.dir is not a writable directory"),
    ("train.collective_timeout=0", "train.collective_timeout=0.0 must be a positive number of seconds"),
    ("data.batch_size=6", "at least 2 x data.classes_per_batch"),
    ("model.teacher=resnet_unknown", "not a timm model"),
    ("data.class_source=pseudo", "pseudo_classes.json does not exist"),
    ("data.augment.preset=strong", "data.augment.preset='strong' is not one of"),
    ("loss.local_positives=instance", "loss.local_positives='instance' is not one of"),
    ("loss.local_negatives=some", "loss.local_negatives='some' is not one of"),
    ("loss.local_match=pixels", "loss.local_match='pixels' is not one of"),
    ("loss.reduction=max", "loss.reduction='max' is not one of"),
    ("model.pretrained=offline", "model.pretrained=offline has weights for"),
    ("loss.lambda_wrong_class=1", "loss.lambda_wrong_class=1.0 needs model.class_conditioned=true"),
])
def test_bad_inputs_give_clear_errors(data: Path, override: str, message: str,
                                      capsys: pytest.CaptureFixture) -> None:
    from launch.train import main

    assert main(_args(data, "bad", override)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1  # one line, no traceback


def test_a_class_conditioned_run_trains_its_classes_and_scores_each_image_under_its_own(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from ccl.models.inference_graph import InferenceGraph
    from launch.export import main as export_main
    from launch.predict import main as predict_main
    from pipelines.base.model import load_export
    from pipelines.evaluation.evaluate import run_evaluation

    _one(data, "conditioned", "model.class_conditioned=true", "loss.lambda_wrong_class=1", "tracking.vis_every=1",
         "tracking.vis_images=3")
    run = data / "conditioned"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["train/wcl"] > 0 for r in log if "train/wcl" in r) and any("train/wcl" in r for r in log)
    model, _ = load_export(run / "export")
    assert model.condition.class_names == ("toy/a", "toy/b", "toy/c", "toy/d")
    assert float(model.condition.shift.weight.detach().abs().sum()) > 0  # trained away from the identity
    test_build = write_test_build(tmp_path / "test_build", "toy", ["a", "b", "c", "d"], [8], size=64)
    result = run_evaluation(run / "export", [test_build], tmp_path / "eval", vis=0)
    assert result["images"] == result["expected"] and sorted(result["per_group"]) == [
        "toy/a", "toy/b", "toy/c", "toy/d"]
    # predict.py scores a folder of one class's images under --class; the same images under their class by hand
    images = tmp_path / "b_images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), cv2.cvtColor(class_image(1, i, 64, rng), cv2.COLOR_RGB2BGR))
    assert predict_main(["--checkpoint", str(run / "export"), "--input", str(images), "--out",
                         str(tmp_path / "pred"), "--threshold", "none", "--no-vis", "--class", "toy/b"]) == 0
    with open(tmp_path / "pred" / "scores.csv") as f:
        got = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(f)}
    graph_input = torch.from_numpy(np.stack([cv2.cvtColor(cv2.imread(str(images / f"{i}.png")), cv2.COLOR_BGR2RGB)
                                             for i in range(2)]))
    want = InferenceGraph(model, "uint8", class_id=1).run_numpy(graph_input.numpy())[1]
    assert [got[f"{i}.png"] for i in range(2)] == pytest.approx(want.tolist(), rel=1e-5)
    capsys.readouterr()
    assert predict_main(["--checkpoint", str(run / "export"), "--input", str(images), "--out",
                         str(tmp_path / "pred2"), "--threshold", "none"]) == 2
    err = capsys.readouterr().err
    assert "give --class, one of ['toy/a', 'toy/b', 'toy/c', 'toy/d']" in err and len(err.strip().splitlines()) == 1
    assert predict_main(["--model", str(tmp_path / "any" / "model.onnx"), "--input", str(images), "--out",
                         str(tmp_path / "pred3"), "--class", "toy/b"]) == 2
    err = capsys.readouterr().err
    assert "--class toy/b applies to --checkpoint only" in err and len(err.strip().splitlines()) == 1
    deploy = ["--checkpoint", str(run / "export"), "--format", "onnx", "--out", str(tmp_path / "deploy")]
    assert export_main(deploy) == 2
    err = capsys.readouterr().err
    assert "is class-conditioned (4 classes)" in err and len(err.strip().splitlines()) == 1


def test_overrides_may_follow_resume(data: Path, capsys: pytest.CaptureFixture) -> None:
    from launch.train import main

    # parsed, and applied: the override after --resume is the one the error names
    assert main([*_args(data, "bad"), "--resume", "auto", "data.batch_size=6"]) == 2
    assert "data.batch_size=6 must be at least 2 x data.classes_per_batch" in capsys.readouterr().err


def _damaged_copy(reference: Path, data: Path, name: str) -> Path:
    run = data / name
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    return run / "checkpoints" / "last"


def test_a_truncated_checkpoint_is_one_line_naming_the_file(data: Path, reference: Path) -> None:
    last = _damaged_copy(reference, data, "truncated")
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    proc = _one(data, "truncated", "train.epochs=3", "--resume", "auto", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {weights}: not a readable safetensors file, truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_random_state_is_a_warning_or_with_determinism_an_error(data: Path, reference: Path) -> None:
    last = _damaged_copy(reference, data, "norng")
    (last / "random_states_0.pkl").unlink()
    strict = _one(data, "norng", "train.epochs=2", "run.deterministic=true", "--resume", "auto", check=False)
    assert strict.returncode == 2 and "random_states_0.pkl is missing" in strict.stderr
    assert "run.deterministic=true makes this an error" in strict.stderr
    lenient = _one(data, "norng", "train.epochs=2", "--resume", "auto")  # already at epoch 2: nothing to train
    assert f"{last / 'random_states_0.pkl'} is missing: rank 0 resumes with a fresh random state" in lenient.stderr


def test_bad_shards_and_world_size_give_clear_errors(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from launch.train import main

    only_val = write_build(tmp_path / "valonly", "toy", ["a", "b"], [], val_sizes=[4], size=16)
    assert main(_args(data, "bad", f"data.shards=[{only_val}]")) == 2
    assert "has no train shards" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(data / "shards", broken)
    (broken / "train-000001.tar").unlink()
    assert main(_args(data, "bad", f"data.shards=[{broken}]")) == 2
    assert "train-000001.tar listed in" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(_args(data, "bad", "data.plan_ranks=0")) == 2
    assert "not divisible by the 3 processes" in capsys.readouterr().err
