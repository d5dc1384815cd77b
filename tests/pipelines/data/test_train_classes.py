"""Training on some classes, replaying others, and the early-stopping rule; keys read back from the tars."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipelines.base.config import ConfigError, load_config
from pipelines.data.labels import load_labels
from pipelines.data.train_classes import select_classes
from pipelines.data.train_data import epoch_steps, train_loader
from pipelines.training.checkpoint import TrainState
from pipelines.training.early_stop import judge
from pipelines.training.inputs import check_inputs
from shard_format.builds import open_builds
from tests.pipelines.train_fixtures import keys_of, write_build

CLASSES = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_build(tmp_path_factory.mktemp("six"), "toy", CLASSES, [37, 29], size=16, val_sizes=[12])


def _cfg(build: Path, run_dir: Path, *extra: str):
    return load_config(None, [f"data.shards=[{build}]", f"run.dir={run_dir}", "data.batch_size=8",
                              "data.classes_per_batch=4", "data.num_workers=1", "data.image_size=32",
                              "data.shuffle_buffer=4", "model.teacher=resnet18", "model.pretrained=none", *extra])


def _class(key: str) -> str:
    return "toy/" + key.split("/")[1]


def _epoch_keys(cfg, data, rank: int, world: int, epoch: int = 0) -> list[list[str]]:
    labels = load_labels(data.all, "raw")
    loader = train_loader(cfg, data.current, labels, rank, world, epoch, replay=data.replay)
    return [batch["keys"] for batch in loader]


def test_data_classes_trains_on_those_classes_only_and_reads_each_of_their_samples_once(build: Path,
                                                                                      tmp_path: Path) -> None:
    cfg = _cfg(build, tmp_path, "data.classes=[toy/b,toy/e]")
    data = select_classes(cfg, open_builds([build]))
    wanted = [k for k in keys_of(build) if _class(k) in ("toy/b", "toy/e")]
    assert data.current.count("train") == len(wanted) == 22 and data.replay is None
    assert data.current.class_index == open_builds([build]).class_index  # ids unchanged by the selection
    seen = [k for rank in (0, 1) for batch in _epoch_keys(cfg, data, rank, 2) for k in batch]
    assert len(seen) == epoch_steps(cfg, data.current) * 8 == 16
    assert set(seen) <= set(wanted) and len(set(seen)) == len(seen)  # each at most once; 6 left for later epochs
    val = {k for k in keys_of(data.all.builds[0], "val")}
    assert {_class(k) for k in val} == {"toy/b", "toy/e"} and len(val) == 4


def test_continual_batches_hold_the_stated_replay_fraction(build: Path, tmp_path: Path) -> None:
    cfg = _cfg(build, tmp_path, "data.classes=[toy/e,toy/f]", "data.replay_classes=[toy/a,toy/b,toy/c,toy/d]",
               "data.replay_fraction=0.25")
    data = select_classes(cfg, open_builds([build]))
    old = {"toy/a", "toy/b", "toy/c", "toy/d"}
    for rank in (0, 1):
        batches = _epoch_keys(cfg, data, rank, 2)
        assert len(batches) == epoch_steps(cfg, data.current) == 22 // 6
        for keys in batches:
            kinds = Counter(_class(k) in old for k in keys)
            assert kinds == {False: 3, True: 1}  # 2 of every 8 over both ranks: a quarter of the batch
    one = _epoch_keys(cfg, data, 0, 2)
    assert one == _epoch_keys(cfg, data, 0, 2)  # seeded: the same replay samples every time
    assert one != _epoch_keys(cfg, data, 0, 2, epoch=1)


def test_a_replay_that_outlasts_its_data_walks_it_again(build: Path, tmp_path: Path) -> None:
    cfg = _cfg(build, tmp_path, "data.classes=[toy/b,toy/c,toy/d,toy/e,toy/f]", "data.replay_classes=[toy/a]",
               "data.replay_fraction=0.25")
    data = select_classes(cfg, open_builds([build]))  # 11 replay samples, 2 per batch, 9 batches
    replayed = [k for keys in _epoch_keys(cfg, data, 0, 1) for k in keys if _class(k) == "toy/a"]
    assert len(replayed) == 2 * 9 and Counter(replayed).most_common(1)[0][1] >= 2


@pytest.mark.parametrize("extra, problem", [
    (["data.classes=[toy/z]"], r"\['toy/z'\] are not classes"),
    (["data.classes=[toy/a]", "data.replay_classes=[toy/a]", "data.replay_fraction=0.25"], "in both"),
    (["data.classes=[toy/a]", "data.replay_classes=[toy/b]"], "go together"),
    (["data.classes=[toy/a,toy/c]", "data.replay_classes=[toy/b]", "data.replay_fraction=0.3"],
     "whole, non-zero multiple of K=2"),
    (["train.val_smoothing=1.0"], "val_smoothing"),
    (["train.init_from=/nonexistent"], "not an export"),
])
def test_bad_selections_are_refused_before_training(build: Path, tmp_path: Path, extra: list[str],
                                                    problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_inputs(_cfg(build, tmp_path, *extra), 1)


def test_early_stopping_keeps_the_raw_best_but_stops_on_the_smoothed_loss_after_min_epochs() -> None:
    cfg = load_config(None, ["train.patience=2", "train.val_smoothing=0.5", "train.min_epochs=5"])
    state, outcomes = TrainState(), []
    # One lucky low at epoch 2 (0.5) and noise around a slowly falling loss.
    for epoch, loss in enumerate([1.0, 0.5, 0.9, 0.85, 0.8, 0.82, 0.84, 0.86], start=1):
        state.epoch = epoch
        outcomes.append(judge(state, loss, cfg.train))
    # Smoothed: 1.0, 0.75, 0.825, 0.8375, 0.81875, 0.819, 0.830, 0.845 -> lows at epochs 1 and 2 only.
    assert [best for best, _ in outcomes] == [True, True, False, False, False, False, False, False]
    assert [stop for _, stop in outcomes] == [False, False, False, False, True, True, True, True]
    assert state.best_val == 0.5
    plain = load_config(None, ["train.patience=2"]).train
    state = TrainState()
    stops = []
    for epoch, loss in enumerate([1.0, 0.5, 0.9, 0.85], start=1):
        state.epoch = epoch
        stops.append(judge(state, loss, plain)[1])
    assert stops == [False, False, False, True]  # the raw rule: two validations without a new low


def _train(root: Path, run: str, *extra: str) -> Path:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    args = [sys.executable, "launch/train.py", "--config", str(root / "empty.yaml"), f"data.shards=[{root / 'shards'}]",
            f"run.dir={root / run}", "model.teacher=resnet18", "model.pretrained=none", "data.image_size=32",
            "data.batch_size=4", "data.classes_per_batch=2", "train.epochs=1", "data.num_workers=0",
            "train.progress=false", "tracking.vis_every=0", "eval.batch_size=8", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root / run / "export"


@pytest.mark.slow
def test_a_stage_started_from_an_export_starts_from_its_weights_and_records_its_classes(tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file

    from tests.pipelines.train_fixtures import toy_training_dir

    root = toy_training_dir(tmp_path)
    first = _train(root, "stage1", "data.classes=[toy/a,toy/b]")
    frozen = ("train.lr_projector=0", "train.lr_rest=0", "run.seed=5")  # no update: the weights stay the start
    second = _train(root, "stage2", "data.classes=[toy/c]", f"train.init_from={first}", *frozen)
    fresh = _train(root, "fresh", "data.classes=[toy/c]", *frozen)
    w1, w2, w3 = (load_file(str(e / "model.safetensors")) for e in (first, second, fresh))
    params = [k for k in w1 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all((w1[k] == w2[k]).all() for k in params)  # stage 2 began where stage 1 ended
    assert not all((w1[k] == w3[k]).all() for k in params)  # and not by chance: another seed's start differs
    info1, info2 = (json.loads((e / "info.json").read_text()) for e in (first, second))
    assert info1["trained_classes"] == ["toy/a", "toy/b"]
    assert info2["trained_classes"] == ["toy/a", "toy/b", "toy/c"] and info2["init_from"] == str(first)
    assert info2["class_index"] == info1["class_index"]  # ids kept
    assert "image_threshold" not in info2  # only an evaluation of these weights writes one
