"""The sweep runner: the Markdown table from fake metrics, dry runs, resuming, failures, and (once the
trainer exists) a real two-row toy sweep."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.base.config import ConfigError
from pipelines.experiments.sweep import Row, Sweep, load_sweep, plan_sweep, read_mean_metrics, render_table, run_sweep
from tests.pipelines.shard_fixtures import write_test_build

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

EXPECTED = """\
**Table 5.** Local CL (mvtec)

| Ablation | Setting | I-AUROC | P-AUROC | PRO |
| --- | --- | ---: | ---: | ---: |
| Scales | {f3} | 95.1 | 97.3 | 90.0 |
|  | {f1,f2,f3} | - | - | - |
| Window | full | 100.0 | - | 12.3 |
"""


def test_render_table_in_the_papers_layout() -> None:
    sweep = Sweep(5, "Local CL", (Row("{f3}", "Scales"), Row("{f1,f2,f3}", "Scales"), Row("full", "Window")))
    results = {"scales-f3": {"I-AUROC": 0.9512, "P-AUROC": 0.97349, "AUPRO": 0.9, "I-AP": 0.5},
               "scales-f1-f2-f3": None,
               "window-full": {"I-AUROC": 1.0, "P-AUROC": None, "AUPRO": 0.123}}
    assert render_table(sweep, results, "mvtec") == EXPECTED


def test_render_table_without_groups_has_no_ablation_column() -> None:
    table = render_table(Sweep(6, "Global loss", (Row("SupCon"),)), {"supcon": {"I-AUROC": 0.5}})
    assert table.splitlines()[2:] == ["| Setting | I-AUROC | P-AUROC | PRO |", "| --- | ---: | ---: | ---: |",
                                      "| SupCon | 50.0 | - | - |"]


EXPECTED_COLUMNS = """\
**COCO-AD** (cocoad)

| Metric | Split 0 | Split 1 | Mean |
| --- | ---: | ---: | ---: |
| I-AUROC | 80.0 | 60.0 | 70.0 |
| PRO | 50.0 | - | - |
| train classes | 60 | - |  |
"""


def test_columns_layout_puts_the_mean_next_to_the_rows() -> None:
    """The published COCO-AD layout; a mean over fewer rows than the table has is not shown."""
    sweep = Sweep("cocoad", "COCO-AD", (Row("Split 0"), Row("Split 1")), layout="columns", summary="mean",
                  metrics=("I-AUROC", "PRO"))
    results = {"split-0": {"I-AUROC": 0.8, "AUPRO": 0.5}, "split-1": {"I-AUROC": 0.6, "AUPRO": None}}
    assert render_table(sweep, results, "cocoad", {"split-0": 60, "split-1": None}) == EXPECTED_COLUMNS
    rows = render_table(Sweep(9, "t", (Row("a"), Row("b")), summary="mean"),
                        {"a": {"I-AUROC": 0.5, "P-AUROC": 0.9}, "b": {"I-AUROC": 0.7, "P-AUROC": None}})
    assert rows.splitlines()[-1] == "| Mean | 60.0 | - | - |"


def test_sweep_keys_common_overrides_and_checks(tmp_path: Path, capsys) -> None:
    path = tmp_path / "named.yaml"
    path.write_text("table: named\ntitle: x\nconfig: mvtec.yaml\noverrides: [loss.lambda_global=0]\nclasses: 30\n"
                    "rows:\n  - {name: a, overrides: [loss.temperature=0.2], build_args: {cocoad_split: 1}}\n")
    sweep = load_sweep(path)
    assert (sweep.table, sweep.tag, sweep.classes) == ("named", "named", 30)
    assert sweep.rows[0].all_overrides() == ["loss.lambda_global=0", "loss.temperature=0.2"]
    build = write_test_build(tmp_path / "b", "cocoad", ["cat1", "cat2"], [4, 4], size=8)
    manifest = json.loads((build / "manifest.json").read_text())
    (build / "manifest.json").write_text(json.dumps({**manifest, "args": {"cocoad_split": 0}}))
    with pytest.raises(ConfigError, match=r"built with cocoad_split=0, but row 'a' needs cocoad_split=1"):
        plan_sweep(sweep, extra=[f"data.shards=[{build}]"], out_dir=tmp_path / "out")
    err = capsys.readouterr().err
    assert "rows of named are written for 30 classes" in err and "hold 2" in err
    (build / "manifest.json").write_text(json.dumps({**manifest, "args": {"cocoad_split": 1}}))
    plans = plan_sweep(sweep, extra=[f"data.shards=[{build}]"], out_dir=tmp_path / "out")
    assert plans[0].config.loss.lambda_global == 0 and plans[0].config.loss.temperature == 0.2
    bad = tmp_path / "bad_layout.yaml"
    bad.write_text("table: 9\ntitle: x\nlayout: diagonal\nrows: [{name: a}]\n")
    with pytest.raises(ConfigError, match="layout"):
        load_sweep(bad)


def test_read_mean_metrics(tmp_path: Path) -> None:
    assert read_mean_metrics(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_mean_metrics(tmp_path / "bad.json") is None
    (tmp_path / "ok.json").write_text(json.dumps({"mean": {"I-AUROC": 0.9}, "groups": {}}))
    assert read_mean_metrics(tmp_path / "ok.json") == {"I-AUROC": 0.9}


def test_sweep_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("table: 9\ntitle: x\nrows:\n  - {name: a, override: [loss.temperature=1]}\n")
    with pytest.raises(ConfigError, match="allows only"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(42)
    twin = tmp_path / "twin.yaml"
    twin.write_text("table: 9\ntitle: x\nrows:\n  - {name: A b}\n  - {name: a-B}\n")
    with pytest.raises(ConfigError, match="share a directory"):
        load_sweep(twin)


def test_a_bad_row_fails_before_anything_runs(tmp_path: Path) -> None:
    sweep = Sweep(9, "x", (Row("ok"), Row("typo", overrides=("loss.temprature=1",))))
    with pytest.raises(ConfigError, match="temprature"):
        plan_sweep(sweep, CONFIGS / "mvtec.yaml", out_dir=tmp_path)


def test_dry_run_lists_the_settings_and_commands_and_runs_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    from launch.sweep import main

    assert main(["--table", "3", "--dry-run", "--out", str(out), "--launcher", "accelerate launch --num_processes 2",
                 "train.max_steps=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [shlex.split(line) for line in lines if "launch/train.py" in line]
    evaluate = [shlex.split(line) for line in lines if "launch/evaluate.py" in line]
    pseudo = [line for line in lines if "pseudo_classes.py" in line]
    settings = [line for line in lines if line.startswith("# ")]
    assert len(train) == len(evaluate) == 7 and len(pseudo) == 3
    # The row's resolved settings (the trailing k=v apply to the experiment config every row starts from).
    assert settings[0] == '# components-joint-rd: loss.lambda_local=0.0 loss.lambda_global=0.0 model.projector="none"'
    assert settings[3] == "# components-ccl-local-global-cl: (the experiment config as is)"
    assert train[0][:4] == ["accelerate", "launch", "--num_processes", "2"]
    assert train[0][4].endswith("launch/train.py") and evaluate[0][4].endswith("launch/evaluate.py")
    config = str(load_sweep(3).default_config)
    assert Path(config).resolve() == CONFIGS / "all_in_all_30.yaml"
    assert train[0][5:] == ["--config", config, "loss.lambda_local=0",
                            "loss.lambda_global=0", "model.projector=none", "train.max_steps=2",
                            f"run.dir={out}/components-joint-rd", "run.name=all_in_all_30-table3-components-joint-rd",
                            "--resume", "auto"]
    assert evaluate[0][5:] == ["--checkpoint", f"{out}/components-joint-rd/export",
                               "--shards", "data/shards/mvtec", "--shards", "data/shards/visa",
                               "--shards", "data/shards/btad", "--out", f"{out}/components-joint-rd/eval"]
    assert "--k 60" in pseudo[2] and "--out pseudo_classes_k60.json" in pseudo[2]
    assert "--teacher resnet18.tv_in1k --level -1 --pretrained hub" in pseudo[2]
    assert not out.exists()


FAKE_LAUNCHER = """\
import json, sys
from pathlib import Path
script, args = sys.argv[1], sys.argv[2:]
log = Path(sys.argv[0]).with_name("calls.log")
with log.open("a") as f:
    f.write(json.dumps([Path(script).name] + args) + "\\n")
if script.endswith("train.py"):
    if "loss.temperature=0.05" in args:
        sys.exit(3)  # this row's training fails
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("run.dir="))
    (Path(run_dir) / "export").mkdir(parents=True)
else:
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True)
    tau = 0.7 if "tau-0-1" in str(out) else 0.6
    (out / "metrics.json").write_text(json.dumps({"mean": {"I-AUROC": tau, "P-AUROC": 0.95, "AUPRO": None}}))
"""


def test_sweep_runs_rows_writes_the_table_and_resumes(tmp_path: Path, capsys) -> None:
    fake = tmp_path / "fake_launcher.py"
    fake.write_text(FAKE_LAUNCHER)
    sweep_file = tmp_path / "table9.yaml"
    sweep_file.write_text(textwrap.dedent("""\
        table: 9
        title: Temperature
        rows:
          - {group: tau, name: "0.05", overrides: [loss.temperature=0.05]}
          - {group: tau, name: "0.1", overrides: [loss.temperature=0.1]}
          - {group: tau, name: "0.2", overrides: [loss.temperature=0.2]}
          - {group: tau, name: default, overrides: []}
        """))
    sweep = load_sweep(sweep_file)
    out = tmp_path / "sweep"
    plans = plan_sweep(sweep, CONFIGS / "mvtec.yaml", ["train.max_steps=2"], out, f"{sys.executable} {fake}")
    table = run_sweep(sweep, plans, experiment="mvtec")
    calls = [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    # The failed row is not evaluated; the default row shares tau = 0.1's run.
    assert [c[0] for c in calls] == ["train.py", "train.py", "evaluate.py", "train.py", "evaluate.py"]
    assert (out / "table9.md").read_text() == table
    assert table.splitlines()[4:] == ["| tau | 0.05 | - | - | - |", "|  | 0.1 | 70.0 | 95.0 | - |",
                                      "|  | 0.2 | 60.0 | 95.0 | - |", "|  | default | 70.0 | 95.0 | - |"]
    assert "failed rows: ['tau-0-05']" in capsys.readouterr().out
    # A second run only retries the row without a result.
    run_sweep(sweep, plans)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 6 and "loss.temperature=0.05" in calls[-1]


def test_cli_reports_an_unknown_table_without_a_traceback(capsys) -> None:
    from launch.sweep import main

    assert main(["--table", "4", "--config", str(CONFIGS / "base.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "table4.yaml" in err and "does not exist" in err


@pytest.mark.slow
def test_cocoad_one_command_trains_and_evaluates_the_four_splits_into_one_table(tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    """A tiny synthetic COCO through the builder (four splits), then `launch/sweep.py --table cocoad`: each
    split trained and evaluated on its own build, one table with a column per split and their mean."""
    from launch.sweep import main
    from shard_tools.build import run as build_shards
    from tests.shard_tools.fixtures import write_cocoad_four_splits

    want = write_cocoad_four_splits(tmp_path / "coco")
    for k in range(4):  # as the sweep file says; relative paths resolve against the working directory
        build_shards(["--datasets", "cocoad", "--root", f"cocoad={tmp_path / 'coco'}", "--cocoad-split", str(k),
                      "--out", str(tmp_path / "data" / "shards" / f"cocoad_split{k}")])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = ["model.teacher=resnet18", "model.pretrained=none", "data.image_size=64", "train.max_steps=1",
             "train.epochs=1", "data.num_workers=0", "eval.num_workers=0", "data.batch_size=4",
             "data.classes_per_batch=2", "tracking.vis_images=0", "tracking.tsne=false", "tracking.vis_every=0",
             "eval.vis=0"]
    assert main(["--table", "cocoad", "--launcher", sys.executable, *extra]) == 0
    root = tmp_path / "runs" / "cocoad" / "cocoad"
    table = (root / "cocoad.md").read_text()
    capsys.readouterr()
    with capsys.disabled():
        print("\n" + table)
    lines = table.splitlines()
    assert lines[2] == "| Metric | Split 0 | Split 1 | Split 2 | Split 3 | Mean |"
    results = []
    for k in range(4):
        result = json.loads((root / f"split-{k}" / "eval" / "metrics.json").read_text())
        assert list(result["per_group"]) == ["cocoad/coco"]  # one metric group, whatever the classes
        assert result["images"] == result["expected"] == want[k]["normal"] + want[k]["anomalous"]
        assert result["shards"] == [f"data/shards/cocoad_split{k}/cocoad"]
        results.append(result["mean"])
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:]}
    for column, key in (("I-AUROC", "I-AUROC"), ("I-AP", "I-AP"), ("P-AUROC", "P-AUROC"), ("PRO", "AUPRO")):
        values = [r[key] for r in results]
        assert cells[column] == [f"{100 * v:.1f}" for v in values] + [f"{100 * sum(values) / 4:.1f}"], column
    assert cells["train classes"] == [str(want[k]["classes"]) for k in range(4)] + [""]
