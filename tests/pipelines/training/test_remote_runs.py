"""Training and evaluation from ``s3://`` (a real S3 server on localhost, tests/object_store.py) equal the same runs
from the local copy of the builds, and a changed object ends a training with one line that names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.experiments.jobs import launcher
from shard_tools.upload import upload_build
from tests.object_store import S3Server, env_client
from tests.pipelines.shard_fixtures import write_test_build
from tests.pipelines.train_fixtures import write_build

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict:
    """Local train/val and test builds, and the same uploaded to the server."""
    root = tmp_path_factory.mktemp("remote")
    train = write_build(root / "train" / "toy", "toy", ["a", "b", "c", "d"], [20, 12], size=64, val_sizes=[10])
    test = write_test_build(root / "test" / "toy", "toy", ["a", "b", "c", "d"], [6, 6], size=64)
    (root / "empty.yaml").write_text("{}\n")
    with pytest.MonkeyPatch.context() as mp:
        env_client(mp, s3_server.env())
        s3_server.make_bucket("runs")
        upload_build(train, "s3://runs/train/toy")
        upload_build(test, "s3://runs/test/toy")
    return {"root": root, "train": str(train), "test": str(test), "s3_train": "s3://runs/train/toy",
            "s3_test": "s3://runs/test/toy", "env": s3_server.env()}


def _env(data: dict, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "AWS_"))}
    return {**env, **data["env"], "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _train(data: dict, run: str, shards: str, processes: int = 2) -> subprocess.CompletedProcess:
    root = data["root"]
    args = ["--config", str(root / "empty.yaml"), f"data.shards=[{shards}]", f"run.dir={root / run}",
            "model.teacher=resnet18", "model.pretrained=none", "data.image_size=64", "data.batch_size=8",
            "data.classes_per_batch=4", "train.epochs=1", "train.log_every=1", "data.num_workers=1",
            "tracking.wandb.mode=disabled", "data.plan_ranks=2", "train.progress=false", "tracking.vis_every=0",
            f"data.cache_dir={root / 'cache'}"]
    launch = [*launcher(processes), "launch/train.py"] if processes > 1 else [sys.executable, "launch/train.py"]
    env = _env(data, ACCELERATE_USE_CPU="1") if processes > 1 else _env(data)
    return subprocess.run([*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _evaluate(data: dict, export: Path, shards: str, out: Path) -> dict:
    cmd = [sys.executable, "launch/evaluate.py", "--checkpoint", str(export), "--shards", shards, "--out", str(out),
           "--vis", "0", "eval.batch_size=4", "eval.num_workers=1", f"data.cache_dir={data['root'] / 'cache'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(data), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


def _losses(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith(("train/", "val/")) or k == "step"}
            for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
            if "train/loss" in r or "val/loss" in r]


def test_two_ranks_train_and_evaluate_from_s3_as_from_the_local_copy(data: dict) -> None:
    for run, shards in (("local", data["train"]), ("s3", data["s3_train"])):
        proc = _train(data, run, shards)
        assert proc.returncode == 0, proc.stderr[-4000:]
    root = data["root"]
    local, remote = _losses(root / "local"), _losses(root / "s3")
    assert local == remote and len(local) >= 4  # the same samples in the same batches: the same numbers
    weights = [(root / r / "export" / "model.safetensors").read_bytes() for r in ("local", "s3")]
    assert weights[0] == weights[1]
    export = root / "local" / "export"
    on_disk = _evaluate(data, export, data["test"], root / "eval_local")
    from_s3 = _evaluate(data, export, data["s3_test"], root / "eval_s3")
    for key in ("mean", "per_group", "pooled", "threshold", "counts", "images", "complete"):
        assert on_disk[key] == from_s3[key], key
    assert from_s3["images"] == 12 and from_s3["complete"]


def test_a_changed_object_ends_the_training_with_one_line(data: dict, s3_server: S3Server) -> None:
    url = f"{data['s3_train']}/train-000001.tar"
    good = s3_server.get_object(url)
    s3_server.put_object(url, good[:-1] + bytes([good[-1] ^ 1]))  # the same size, one bit else
    try:
        proc = _train(data, "changed", data["s3_train"], processes=1)
    finally:
        s3_server.put_object(url, good)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{url}: sha256" in proc.stderr and "changed since the build" in proc.stderr
    assert "Traceback" not in proc.stderr
