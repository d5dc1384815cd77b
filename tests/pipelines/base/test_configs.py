"""Every experiment config and every sweep row loads through pipelines.base.config and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.base.config import load_config, parse_override, to_dict
from pipelines.experiments.sweep import SWEEPS_DIR, load_sweep, plan_sweep

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DATASETS = ("mvtec", "visa", "btad", "realiad", "manta", "cocoad")
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
SWEEP_FILES = sorted(SWEEPS_DIR.glob("*.yaml"))


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_config_file_passes_the_entry_points_config_checks(path: Path) -> None:
    """What launch/train.py checks before it reads any shard: batch arithmetic on one process and on the
    processes the data plan is cut for, the loss settings, the teacher and its weights."""
    from pipelines.base.checks import check_batch, check_compile, check_loss, check_model

    cfg = load_config(path)
    for world in {1, cfg.data.plan_ranks or 1}:
        check_batch(cfg, world)
    check_loss(cfg)
    check_model(cfg)
    check_compile(cfg)


def test_base_holds_the_papers_settings() -> None:
    cfg = load_config(CONFIGS / "base.yaml")
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.classes_per_batch) == (256, 16, 8)
    assert (cfg.loss.temperature, cfg.loss.lambda_local, cfg.loss.lambda_global) == (0.1, 1.0, 1.0)
    assert (cfg.train.lr_projector, cfg.train.lr_rest, cfg.train.betas) == (0.001, 0.005, (0.5, 0.999))
    assert cfg.train.patience > 0 and cfg.train.val_every == 1  # early stopping on the validation loss
    assert (cfg.model.teacher, cfg.model.pretrained, cfg.model.projector) == ("wide_resnet50_2", "hub", "4-cblocks")
    assert (cfg.loss.local_window, cfg.loss.local_scales, cfg.loss.global_loss) == (1, (0, 1, 2), "supcon")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_configs_are_base_pointed_at_their_build(name: str) -> None:
    """A dataset's config is the paper's setting (base.yaml) with its build, its run directory and at most
    the epochs and classes per batch changed (a dataset with few classes, or many images)."""
    base = _flat(to_dict(load_config(CONFIGS / "base.yaml")))
    cfg = load_config(CONFIGS / f"{name}.yaml")
    changed = {k for k, v in _flat(to_dict(cfg)).items() if v != base[k]}
    assert {"data.shards", "run.dir"} <= changed <= {"data.shards", "run.dir", "run.name", "train.epochs",
                                                     "data.classes_per_batch"}, changed
    assert (cfg.data.shards, cfg.run.dir) == ((f"data/shards/{name}",), f"runs/{name}")


def test_all_in_all_trains_on_the_four_benchmarks() -> None:
    cfg = load_config(CONFIGS / "all_in_all.yaml", ["data.shards=[x/mvtec,x/visa,x/btad,x/realiad]"])
    assert cfg.data.shards == ("x/mvtec", "x/visa", "x/btad", "x/realiad")  # users override the location
    default = load_config(CONFIGS / "all_in_all.yaml")
    assert [Path(s).name for s in default.data.shards] == ["mvtec", "visa", "btad", "realiad"]
    assert default.run.dir == "runs/all_in_all"


def test_the_ablation_experiment_is_mvtec_visa_btad_all_in_all() -> None:
    cfg = load_config(CONFIGS / "all_in_all_30.yaml")
    assert [Path(s).name for s in cfg.data.shards] == ["mvtec", "visa", "btad"]  # 15 + 12 + 3 = 30 classes
    assert cfg.run.dir == "runs/all_in_all_30" and cfg.data.batch_size == 16 and cfg.model.teacher == "wide_resnet50_2"


def test_the_four_ablation_tables_exist_and_default_to_the_30_class_experiment() -> None:
    assert [load_sweep(t).table for t in (3, 5, 6, 7)] == [3, 5, 6, 7]
    assert [len(load_sweep(t).rows) for t in (3, 5, 6, 7)] == [7, 9, 4, 8]
    assert {load_sweep(t).default_config.resolve() for t in (3, 5, 6, 7)} == {CONFIGS / "all_in_all_30.yaml"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_row_applies_on_top_of_base(path: Path) -> None:
    sweep = load_sweep(path)
    for row in sweep.rows:
        tree = to_dict(load_config(CONFIGS / "base.yaml", row.all_overrides()))
        for item in row.all_overrides():
            key, value = parse_override(item)
            got = _get(tree, key)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (row.name, item)


def _resolved(table: int | str, by: str = "name") -> dict[str, object]:
    """Row name (or slug) -> the row's resolved config, planned as ``launch/sweep.py --table N`` plans it
    (on the sweep's own experiment config)."""
    plans = plan_sweep(load_sweep(table), out_dir="/nonexistent/sweep")
    return {getattr(p.row, by): p.config for p in plans}


def test_every_table_runs_on_mvtec_visa_btad_all_in_all() -> None:
    for table in (3, 5, 6, 7):
        for name, cfg in _resolved(table).items():
            assert [Path(s).name for s in cfg.data.shards] == ["mvtec", "visa", "btad"], (table, name)


def test_table3_rows_switch_the_losses_and_the_class_source() -> None:
    rows = _resolved(3)
    for name, (local, glob, projector) in {"Joint RD": (0, 0, "none"), "+ local CL": (1, 0, "4-cblocks"),
                                           "+ global CL": (0, 1, "none"),
                                           "CCL (local + global CL)": (1, 1, "4-cblocks")}.items():
        cfg = rows[name]
        assert (cfg.loss.lambda_local, cfg.loss.lambda_global, cfg.model.projector) == (local, glob, projector), name
        assert cfg.data.class_source == "raw"
    for k in (15, 30, 60):  # half, as many as, twice the 30 classes
        cfg = rows[f"K = {k}"]
        assert (cfg.data.class_source, cfg.data.pseudo_file) == ("pseudo", f"pseudo_classes_k{k}.json")
        assert (cfg.loss.lambda_local, cfg.loss.lambda_global) == (1, 1)
    assert load_sweep(3).classes == 30


def test_table3_pseudo_classes_use_the_papers_encoder() -> None:
    """The sweep's sidecar command, parsed by the pseudo-class CLI itself: ImageNet ResNet-18, final stage."""

    from shard_tools.pseudo_classes import load_teacher, parse_args

    plans = [p for p in plan_sweep(load_sweep(3), out_dir="/nonexistent/sweep") if p.row.pseudo_k]
    assert [p.row.pseudo_k for p in plans] == [15, 30, 60]
    for plan in plans:
        (cmd,) = plan.prepare
        args = parse_args(list(cmd[2:]))  # after the interpreter and the script
        assert (args.teacher, args.level, args.pretrained, args.k) == ("resnet18.tv_in1k", -1, "hub", plan.row.pseudo_k)
        assert args.shards == list(plan.config.data.shards)
    teacher = load_teacher(args.teacher, "none", args.level)  # the weights cannot be downloaded here
    assert (teacher.architecture, teacher.layers, teacher.channels) == ("resnet18", ["layer4"], [512])


def test_table5_rows_run_without_global_cl_on_the_full_window() -> None:
    rows = _resolved(5)
    assert all(cfg.loss.lambda_global == 0 and cfg.loss.lambda_local == 1 for cfg in rows.values())
    scales = {"{f3}": (2,), "{f2,f3}": (1, 2), "{f1,f2,f3}": (0, 1, 2)}
    for name, want in scales.items():
        assert (rows[name].loss.local_scales, rows[name].loss.local_window) == (want, "full"), name
        assert rows[name].model.projector == "4-cblocks"
    for name, window in {"full": "full", "3": 3, "1": 1}.items():
        cfg = rows[name]
        assert (cfg.loss.local_window, cfg.loss.local_scales, cfg.model.projector) == (window, (0, 1, 2), "4-cblocks")
    for name, projector in {"2-MLP": "2-mlp", "2 conv blocks": "2-cblocks", "4 conv blocks": "4-cblocks"}.items():
        cfg = rows[name]
        assert (cfg.model.projector, cfg.loss.local_window, cfg.loss.local_scales) == (projector, "full", (0, 1, 2))


def test_table6_rows_run_without_local_cl_and_without_the_projector() -> None:
    rows = _resolved(6)
    assert {name: cfg.loss.global_loss for name, cfg in rows.items()} == {
        "Triplet": "triplet", "N-pairs": "npairs", "InfoNCE": "infonce", "SupCon": "supcon"}
    for cfg in rows.values():
        assert (cfg.loss.lambda_local, cfg.loss.lambda_global, cfg.model.projector) == (0, 1, "none")
    assert rows["SupCon"] == _resolved(3)["+ global CL"]  # the same model as Table 3's "+ global CL"


def test_table7_rows_set_the_loss_weights_and_the_temperature() -> None:
    rows = _resolved(7, by="slug")
    for ratio in ("0.2", "0.5", "1", "2"):
        cfg = rows["lambda1-lambda2-" + ratio.replace(".", "-")]
        assert (cfg.loss.lambda_local, cfg.loss.lambda_global, cfg.loss.temperature) == (float(ratio), 1.0, 0.1)
    for tau in ("0.05", "0.07", "0.1", "0.2"):
        cfg = rows["tau-" + tau.replace(".", "-")]
        assert (cfg.loss.temperature, cfg.loss.lambda_local, cfg.loss.lambda_global) == (float(tau), 1.0, 1.0)


def test_table5_trains_the_recurring_default_once(tmp_path: Path) -> None:
    plans = plan_sweep(load_sweep(5), CONFIGS / "mvtec.yaml", out_dir=tmp_path)
    reused = {p.row.slug: p.reuse for p in plans if p.reuse}
    assert reused == {"window-full": "scales-f1-f2-f3", "projector-4-conv-blocks": "scales-f1-f2-f3"}
    assert len({p.dir for p in plans}) == 7


def test_cocoad_sweep_trains_each_split_on_its_own_build() -> None:
    sweep = load_sweep("cocoad")
    assert (sweep.layout, sweep.summary, sweep.default_config.name) == ("columns", "mean", "cocoad.yaml")
    rows = _resolved("cocoad")
    assert {name: cfg.data.shards for name, cfg in rows.items()} == {
        f"Split {k}": (f"data/shards/cocoad_split{k}/cocoad",) for k in range(4)}
    assert [dict(r.build_args) for r in sweep.rows] == [{"cocoad_split": k} for k in range(4)]


def test_rd4ad_config_takes_torchvisions_teacher_and_the_default_refuses_a_checkpoint(tmp_path: Path) -> None:
    """Checked from the config alone, before any weights are downloaded or any process group starts."""
    from pipelines.base.checks import check_model
    from pipelines.base.config import ConfigError

    ckpt = tmp_path / "wres50_bottle.pth"
    ckpt.write_bytes(b"not read by the check")
    rd4ad = load_config(CONFIGS / "rd4ad.yaml", [f"model.checkpoint={ckpt}"])
    assert (rd4ad.model.teacher, rd4ad.model.pretrained, rd4ad.model.projector) == (
        "wide_resnet50_2.tv_in1k", "hub", "none")
    assert (rd4ad.loss.lambda_local, rd4ad.loss.lambda_global, rd4ad.data.image_size, rd4ad.eval.sigma) == (
        0, 0, 256, 4)
    check_model(rd4ad)
    for config, holds in (("mvtec.yaml", "wide_resnet50_2.racm_in1k"), ("base.yaml", "wide_resnet50_2.racm_in1k")):
        with pytest.raises(ConfigError, match=f"holds '{holds}'"):
            check_model(load_config(CONFIGS / config, [f"model.checkpoint={ckpt}"]))
    with pytest.raises(ConfigError, match="holds 'random'"):
        check_model(load_config(CONFIGS / "rd4ad.yaml", [f"model.checkpoint={ckpt}", "model.pretrained=none"]))


def test_readings_sweep_changes_one_switch_per_row_from_the_papers_reading() -> None:
    rows = _resolved("readings", by="slug")
    base = rows["local-negatives-window-default"]
    loss, m, d = base.loss, base.model, base.data
    assert (loss.local_negatives, loss.local_positives, loss.local_match, loss.reduction) == (
        "window", "class", "projected", "mean")
    assert (d.augment.preset, m.noise_prob, loss.temperature, m.projector_residual) == ("paper", 0.0, 0.1, False)
    assert loss.lambda_local == 1.0 and loss.lambda_global == 1.0 and m.projector == "4-cblocks"
    changed = {slug: {k for k in ("loss", "model", "data") if getattr(cfg, k) != getattr(base, k)}
               for slug, cfg in rows.items()}
    assert rows["local-negatives-all-positions"].loss.local_negatives == "all"
    official = rows["local-positives-own-view-matched-by-the-teacher-official-code"].loss
    assert (official.local_positives, official.local_match, official.local_window) == ("view", "teacher", "full")
    assert rows["reduction-sum-eq-4-5"].loss.reduction == "sum"
    assert [rows[f"augmented-view-{s}"].data.augment.preset for s in ("first-release", "official-code",
                                                                       "geometric-only")] == ["first-release",
                                                                                               "official", "geometric"]
    assert rows["official-code-noise-on-the-neck-s-input"].model.noise_prob == 0.31
    assert rows["official-code-tau-0-05"].loss.temperature == 0.05
    assert rows["projector-residual-rezero"].model.projector_residual is True
    assert all(len(keys) <= 1 for keys in changed.values())  # one section per row moves
