"""The strategies of Fig. 1a: stage plans by hand, one-for-one's table from its class models, staged runs
through the real CLIs on a tiny 3-class build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ccl.metrics.report import mean_over
from pipelines.base.config import ConfigError, load_config
from pipelines.experiments.strategies import combine, stage_plan, strategy_classes
from shard_format.builds import open_builds
from tests.pipelines.shard_fixtures import sample_members, write_manifest, write_shard
from tests.pipelines.train_fixtures import write_build

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["toy/a", "toy/b", "toy/c"]


def _plan(mode: str, *extra: str):
    cfg = load_config(None, [f"strategy.mode={mode}", "train.epochs=7", *extra])
    return stage_plan(cfg, CLASSES, Path("R"))


def test_one_for_one_trains_and_scores_each_class_alone() -> None:
    stages = _plan("one-for-one")
    assert [s.classes for s in stages] == [("toy/a",), ("toy/b",), ("toy/c",)] and all(s.scored for s in stages)
    assert stages[1].overrides == ("run.dir=R/stages/02-toy_b", "data.classes=[toy/b]", "train.epochs=7",
                                   "strategy.mode=joint", "eval.classes=[toy/b]")


def test_sequential_stages_start_from_the_previous_stage_in_the_stated_order() -> None:
    stages = _plan("sequential", "strategy.order=[toy/c,toy/a,toy/b]", "strategy.stage_epochs=3")
    assert [s.name for s in stages] == ["01-toy_c", "02-toy_a", "03-toy_b"] and not any(s.scored for s in stages)
    assert "train.init_from" not in " ".join(stages[0].overrides)
    assert "train.init_from=R/stages/01-toy_c/export" in stages[1].overrides
    assert "train.init_from=R/stages/02-toy_a/export" in stages[2].overrides
    assert all("train.epochs=3" in s.overrides and "data.replay_fraction" not in " ".join(s.overrides)
               for s in stages)


def test_continual_replays_every_earlier_class() -> None:
    stages = _plan("continual", "strategy.replay_fraction=0.5")
    assert "data.replay_classes=[toy/a,toy/b]" in stages[2].overrides
    assert "data.replay_classes=[toy/a]" in stages[1].overrides and "data.replay_fraction=0.5" in stages[1].overrides
    assert not any(o.startswith("data.replay") for o in stages[0].overrides)


def test_an_order_must_list_every_class_once() -> None:
    with pytest.raises(ConfigError, match="every training class once"):
        _plan("sequential", "strategy.order=[toy/a,toy/b]")


def test_combine_takes_each_class_from_its_own_model() -> None:
    a = {"per_group": {"toy/a": {"I-AUROC": 0.9, "P-AUROC": 0.8}}, "complete": True}
    b = {"per_group": {"toy/b": {"I-AUROC": 0.5, "P-AUROC": None}}, "complete": True}
    out = combine([a, b])
    assert out["mean"]["I-AUROC"] == pytest.approx(0.7) and out["mean"]["P-AUROC"] == pytest.approx(0.8)
    assert out["per_dataset"]["toy"]["I-AUROC"] == pytest.approx(0.7) and out["threshold"] is None
    with pytest.raises(ValueError, match="two class models"):
        combine([a, a])


# ---------------------------------------------------------------- through the CLIs


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes: 8 train + 2 val samples each (32 px), and 2 normal + 2 anomalous test samples each."""
    out = write_build(tmp_path_factory.mktemp("strategies") / "toy", "toy", ["a", "b", "c"], [24], size=32,
                      val_sizes=[6])
    manifest = json.loads((out / "manifest.json").read_text())
    rng, samples = np.random.default_rng(1), []
    for n in range(12):
        cls = "abc"[n % 3]
        samples.append(sample_members("toy", cls, "abc".index(cls), "test", 100 + n, 32, rng, n >= 6))
        kind = "anomalous" if n >= 6 else "normal"
        manifest["counts"].setdefault("test", {}).setdefault(cls, {"normal": 0, "anomalous": 0})[kind] += 1
    entries = [*manifest["shards"], write_shard(out, "test", 0, samples)]
    return write_manifest(out, "toy", manifest["classes"], manifest["counts"], entries)


def test_data_classes_limit_the_stages_to_classes_of_the_builds(build: Path) -> None:
    shard_set = open_builds([build])
    assert strategy_classes(load_config(None, []), shard_set) == CLASSES
    assert strategy_classes(load_config(None, ["data.classes=[toy/c,toy/a]"]), shard_set) == ["toy/a", "toy/c"]
    with pytest.raises(ConfigError, match=r"data.classes: \['toy/x'\] are not classes of"):
        strategy_classes(load_config(None, ["data.classes=[toy/a,toy/x]"]), shard_set)


TINY = ["model.teacher=resnet18", "model.pretrained=none", "data.image_size=32", "data.batch_size=4",
        "data.classes_per_batch=2", "data.num_workers=0", "eval.num_workers=0", "eval.batch_size=8",
        "train.progress=false", "tracking.vis_every=0", "tracking.wandb.mode=disabled", "train.max_steps=2"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_one_for_one_row_of_a_comparison_is_each_class_scored_by_its_own_model(build: Path, tmp_path: Path) -> None:
    """Two of the build's three classes (data.classes; a stage costs CI half a minute): two class models."""
    (tmp_path / "empty.yaml").write_text("{}\n")
    out, classes = tmp_path / "cmp", CLASSES[:2]
    _run(["launch/compare.py", "--config", str(tmp_path / "empty.yaml"), "--bench", f"toy={build}", "--seeds", "0",
          "--budgets", "1", "--out", str(out), "--processes", "1",
          "--model", f"One-for-one=strategy.mode=one-for-one data.classes=[{','.join(classes)}]", *TINY])
    run = out / "toy" / "one_for_one" / "e1" / "s0"
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert sorted(result["per_group"]) == classes and result["strategy"]["order"] == classes
    for k, cls in enumerate(classes):  # each class model trained on its class alone
        stage = run / "stages" / f"{k + 1:02d}-{cls.replace('/', '_')}"
        assert yaml.safe_load((stage / "export" / "config.yaml").read_text())["data"]["classes"] == [cls]
        assert json.loads((stage / "export" / "info.json").read_text())["trained_classes"] == [cls]
    # class b's row is what evaluating b's model alone gives
    alone = tmp_path / "b_alone"
    _run(["launch/evaluate.py", "--checkpoint", str(run / "stages" / "02-toy_b" / "export"), "--shards", str(build),
          "--out", str(alone), "--vis", "0", "eval.classes=[toy/b]"])
    assert result["per_group"]["toy/b"] == json.loads((alone / "metrics.json").read_text())["per_group"]["toy/b"]
    assert result["mean"] == mean_over(list(result["per_group"].values()))
    assert "| One-for-one | 1 |" in (out / "comparison.md").read_text()


@pytest.mark.slow
def test_continual_from_launch_train_chains_its_stages_and_scores_every_class(build: Path, tmp_path: Path) -> None:
    """Two of the three classes, in the stated order (the replay of several earlier classes: the plan's test)."""
    (tmp_path / "empty.yaml").write_text("{}\n")
    run = tmp_path / "cont"
    _run(["launch/train.py", "--config", str(tmp_path / "empty.yaml"), f"data.shards=[{build}]", f"run.dir={run}",
          "strategy.mode=continual", "data.classes=[toy/a,toy/c]", "eval.classes=[toy/a,toy/c]",
          "strategy.order=[toy/c,toy/a]",
          "strategy.replay_fraction=0.5", *TINY])
    record = json.loads((run / "strategy.json").read_text())
    assert record["order"] == ["toy/c", "toy/a"] and record["mode"] == "continual"
    configs = [yaml.safe_load((run / "stages" / s["name"] / "config.yaml").read_text()) for s in record["stages"]]
    assert [c["data"]["replay_classes"] for c in configs] == [[], ["toy/c"]]
    assert configs[1]["train"]["init_from"] == str(run / "stages" / "01-toy_c" / "export")
    info = json.loads((run / "stages" / "02-toy_a" / "export" / "info.json").read_text())
    assert info["trained_classes"] == ["toy/a", "toy/c"]
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert sorted(result["per_group"]) == ["toy/a", "toy/c"] and result["strategy"]["mode"] == "continual"


@pytest.mark.slow
def test_adding_a_class_keeps_the_export_its_ids_and_its_threshold(build: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("{}\n")
    old = tmp_path / "v1"
    _run(["launch/train.py", "--config", str(tmp_path / "empty.yaml"), f"data.shards=[{build}]", f"run.dir={old}",
          "data.classes=[toy/a,toy/b]", "eval.classes=[toy/a,toy/b]", *TINY])  # the selection stays in its config
    _run(["launch/evaluate.py", "--checkpoint", str(old / "export"), "--shards", str(build), "--out",
          str(old / "eval"), "--vis", "0"])
    before = (old / "export" / "info.json").read_bytes()
    new = tmp_path / "v2"
    _run(["launch/add_classes.py", "--export", str(old / "export"), "--shards", str(build), "--classes", "toy/c",
          "--out", str(new), "--replay", "0.5"])
    assert (old / "export" / "info.json").read_bytes() == before  # the old model is not touched
    info_old, info = json.loads(before), json.loads((new / "export" / "info.json").read_text())
    assert info["class_index"] == info_old["class_index"] and info["trained_classes"] == CLASSES
    config = yaml.safe_load((new / "config.yaml").read_text())
    assert config["data"]["replay_classes"] == ["toy/a", "toy/b"] and config["data"]["classes"] == ["toy/c"]
    metrics = json.loads((new / "eval" / "metrics.json").read_text())
    assert sorted(metrics["per_group"]) == CLASSES
    assert metrics["threshold"] is not None and info["image_threshold"] == metrics["threshold"]  # its own evaluation


def test_adding_a_class_the_export_knows_is_refused(tmp_path: Path) -> None:
    from pipelines.experiments.strategies import add_classes

    export = tmp_path / "export"
    export.mkdir()
    (export / "info.json").write_text(json.dumps({"trained_classes": ["toy/a"]}))
    with pytest.raises(ConfigError, match="already trained on"):
        add_classes(export, [tmp_path], ["toy/a"], tmp_path / "out", 0.25, [], 1)


def test_a_class_conditioned_model_is_neither_staged_nor_grown(tmp_path: Path) -> None:
    from pipelines.experiments.jobs import Job
    from pipelines.experiments.strategies import add_classes, run_strategy
    from tests.pipelines.shard_fixtures import tiny_export

    cfg = load_config(None, ["strategy.mode=sequential", "model.class_conditioned=true"])
    job = Job(tmp_path / "run", Path("config.yaml"), (), (tmp_path / "no_build",))
    with pytest.raises(ConfigError, match="trains on one class at a time"):
        run_strategy(job, cfg, 1, None, {})
    export = tiny_export(tmp_path / "conditioned" / "export", 32, class_index={"toy/a": 0, "toy/b": 1})
    with pytest.raises(ConfigError, match="conditioned on its 2 classes"):
        add_classes(export, [tmp_path], ["toy/c"], tmp_path / "out", 0.25, [], 1)
