"""Every experiment config and every sweep row loads through pipelines.config and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_config, parse_override, to_dict
from pipelines.sweep import SWEEPS_DIR, load_sweep, plan_sweep

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATASETS = ("mvtec", "visa", "btad", "realiad", "manta", "cocoad")
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
SWEEP_FILES = sorted(SWEEPS_DIR.glob("table*.yaml"))


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_config_file_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.batch_size // cfg.data.classes_per_batch >= 2  # SupCon needs a same-class partner


def test_base_holds_the_papers_settings() -> None:
    cfg = load_config(CONFIGS / "base.yaml")
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.classes_per_batch) == (256, 16, 8)
    assert (cfg.loss.temperature, cfg.loss.lambda_local, cfg.loss.lambda_global) == (0.1, 1.0, 1.0)
    assert (cfg.train.lr_projector, cfg.train.lr_rest, cfg.train.betas) == (0.001, 0.005, (0.5, 0.999))
    assert cfg.train.patience > 0 and cfg.train.val_every == 1  # early stopping on the validation loss
    assert (cfg.model.teacher, cfg.model.pretrained, cfg.model.projector) == ("wide_resnet50_2", "hub", "4-cblocks")
    assert (cfg.loss.local_window, cfg.loss.local_scales, cfg.loss.global_loss) == (1, (0, 1, 2), "supcon")


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_configs_include_base_and_point_at_their_build(name: str) -> None:
    assert "include: base.yaml" in (CONFIGS / f"{name}.yaml").read_text()
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.shards == (f"data/shards/{name}",)
    assert cfg.run.dir == f"runs/{name}"
    assert cfg.loss.temperature == 0.1 and cfg.model.teacher == "wide_resnet50_2"
    assert 0 < cfg.train.epochs <= 200


def test_all_in_all_trains_on_the_four_benchmarks() -> None:
    cfg = load_config(CONFIGS / "all_in_all.yaml", ["data.shards=[x/mvtec,x/visa,x/btad,x/realiad]"])
    assert cfg.data.shards == ("x/mvtec", "x/visa", "x/btad", "x/realiad")  # users override the location
    default = load_config(CONFIGS / "all_in_all.yaml")
    assert [Path(s).name for s in default.data.shards] == ["mvtec", "visa", "btad", "realiad"]
    assert default.run.dir == "runs/all_in_all"


def test_the_four_ablation_tables_exist() -> None:
    assert [load_sweep(t).table for t in (3, 5, 6, 7)] == [3, 5, 6, 7]
    assert [len(load_sweep(t).rows) for t in (3, 5, 6, 7)] == [7, 9, 4, 8]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_row_applies_on_top_of_base(path: Path) -> None:
    sweep = load_sweep(path)
    for row in sweep.rows:
        tree = to_dict(load_config(CONFIGS / "base.yaml", row.all_overrides()))
        for item in row.all_overrides():
            key, value = parse_override(item)
            got = _get(tree, key)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (row.name, item)


def test_table3_rows_switch_the_losses_and_the_class_source() -> None:
    rows = {r.name: load_config(CONFIGS / "base.yaml", r.all_overrides()) for r in load_sweep(3).rows}
    joint = rows["Joint RD"]
    assert (joint.loss.lambda_local, joint.loss.lambda_global, joint.model.projector) == (0, 0, "none")
    assert rows["+ local CL"].loss.lambda_global == 0 and rows["+ local CL"].loss.lambda_local == 1
    pseudo = rows["K = 15"].data
    assert (pseudo.class_source, pseudo.pseudo_file) == ("pseudo", "pseudo_classes_k15.json")


def test_table5_trains_the_recurring_default_once(tmp_path: Path) -> None:
    plans = plan_sweep(load_sweep(5), CONFIGS / "mvtec.yaml", out_dir=tmp_path)
    reused = {p.row.slug: p.reuse for p in plans if p.reuse}
    assert reused == {"window-1": "scales-f1-f2-f3", "projector-4-conv-blocks": "scales-f1-f2-f3"}
    assert len({p.dir for p in plans}) == 7
