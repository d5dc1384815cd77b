"""launch/compare.py: statistics by hand, and a toy grid (2 models x 2 seeds) through the real CLIs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.experiments.compare import Cell, Grid, comparison_markdown, mean_std, paired, parse_named
from pipelines.experiments.demo import TOY_DATA, TOY_TRAIN

REPO = Path(__file__).resolve().parents[3]


def _record(model: str, seed: int, mean: float, groups: dict[str, float]) -> dict:
    per_group = {g: {"I-AUROC": v, "P-AUROC": 0.5} for g, v in groups.items()}
    metrics = {"mean": {"I-AUROC": mean, "P-AUROC": 0.5}, "per_group": per_group}
    return {"cell": Cell("b", model, 4, seed), "metrics": metrics}


def test_statistics_by_hand() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert mean_std([0.4]) == (0.4, 0.0)
    assert paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.55, 2: 0.65}) == pytest.approx([0.05, -0.05])


def test_comparison_table_by_hand() -> None:
    grid = Grid(Path("c.yaml"), {"b": (Path("x"),)}, {"A": (), "B": ("loss.x=1",)}, (0, 1), (4,))
    records = [_record("A", 0, 0.60, {"b/u": 0.5}), _record("A", 1, 0.70, {"b/u": 0.7}),
               _record("B", 0, 0.70, {"b/u": 0.9}), _record("B", 1, 0.75, {"b/u": 1.0})]
    lines = comparison_markdown(grid, records).splitlines()
    assert "| A | 2 | 65.0 ± 7.1 | 50.0 ± 0.0 | - | - | - |" in lines
    assert "| B | 2 | 72.5 ± 3.5 | 50.0 ± 0.0 | - | - | - |" in lines
    # paired: +10 and +5 points -> mean +7.5, std 3.5, positive on both seeds; P-AUROC never positive
    assert "| Δ B | 2 | +7.5 ± 3.5 (2/2) | +0.0 ± 0.0 (0/2) | - | - | - |" in lines
    assert "| b/u | 60.0 ± 14.1 | 95.0 ± 7.1 |" in lines


def test_named_arguments() -> None:
    assert parse_named(["Joint RD=a=1 b=2", "X="], "--model") == {"Joint RD": ("a=1", "b=2"), "X": ()}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_named(["noname"], "--model")
    with pytest.raises(ValueError, match="twice"):
        parse_named(["A=", "A=x=1"], "--model")


@pytest.fixture(scope="module")
def toy_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp")
    subprocess.run([sys.executable, "shard_tools/demo_data.py", "--out", str(out / "src"), *TOY_DATA], cwd=REPO,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "shard_tools/build.py", "--datasets", "demo", "--root", f"demo={out / 'src'}",
                    "--out", str(out / "shards"), "--val-fraction", "0.15"], cwd=REPO, check=True, capture_output=True)
    return out / "shards" / "demo"


def _compare(build: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/compare.py", "--config", "configs/demo.yaml", "--bench", f"toy={build}",
           "--seeds", "0", "1", "--budgets", "1", "--out", str(out), "--jobs", "2", "--processes", "1",
           "--port", "29651", *extra, *TOY_TRAIN, "tracking.vis_every=0", "tracking.wandb.mode=disabled"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


MODELS = ["--model", "Joint RD=loss.lambda_local=0 loss.lambda_global=0 model.projector=none", "--model", "RD + CCL=",
          "--model", "Broken=loss.reduction=max"]


@pytest.mark.slow
def test_toy_grid_runs_every_job_once_and_reports(toy_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = _compare(toy_build, out, *MODELS)
    # the broken model's jobs fail (exit 1, named), the others' results are all there
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("FAILED toy | Broken | 1 ep") == 2 and "2 job(s) failed" in proc.stderr
    assert "loss.reduction='max' is not one of" in (out / "toy" / "broken" / "e1" / "s0" / "job.log").read_text()
    classes = sorted(json.loads((toy_build / "manifest.json").read_text())["classes"])
    runs = sorted(out.glob("toy/*/e1/s*/eval/metrics.json"))
    assert [p.relative_to(out).parts[1:4] for p in runs] == [
        ("joint_rd", "e1", "s0"), ("joint_rd", "e1", "s1"), ("rd_ccl", "e1", "s0"), ("rd_ccl", "e1", "s1")]
    for path in runs:  # each job trained with its own seed and the model's overrides
        config = (path.parents[1] / "export" / "config.yaml").read_text()
        assert f"seed: {path.parts[-3][1:]}" in config
        assert ("projector: none" in config) == ("joint_rd" in str(path))
    table = (out / "comparison.md").read_text()
    assert "| Joint RD | 2 |" in table and "| RD + CCL | 2 |" in table and "| Δ RD + CCL | 2 |" in table
    assert "| Broken | 0 |" in table
    assert sum(line.startswith("| demo/") for line in table.splitlines()) == len(classes)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * (len(classes) + 1)
    mean_rows = [r for r in rows if r["group"] == "mean"]
    for r in mean_rows:  # the CSV holds what each job's evaluation wrote
        metrics = json.loads((out / "toy" / r["model"].lower().replace(" + ", "_").replace(" ", "_") / "e1" /
                              f"s{r['seed']}" / "eval" / "metrics.json").read_text())
        assert float(r["I-AUROC"]) == pytest.approx(metrics["mean"]["I-AUROC"], abs=1e-6)
    assert (out / "budget.png").stat().st_size > 1000
    stamps = [p.stat().st_mtime for p in runs]
    again = _compare(toy_build, out, "--report-only", *MODELS)  # nothing runs again; the same tables come out
    assert again.returncode == 0 and (out / "comparison.md").read_text() == table
    assert [p.stat().st_mtime for p in runs] == stamps


def test_bad_bench_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "launch/compare.py", "--config", "configs/demo.yaml", "--bench",
                           f"x={tmp_path}", "--budgets", "1", "--out", str(tmp_path / "o")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a shard build" in proc.stderr
