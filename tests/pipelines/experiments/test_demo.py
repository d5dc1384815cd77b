"""`make demo` at toy size: shards -> Joint RD and RD + CCL on 2 ranks -> streaming evaluation -> table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from pipelines.experiments.demo import comparison_table

REPO = Path(__file__).resolve().parents[3]


def test_comparison_table_by_hand():
    a = {"per_group": {"demo/x": {"I-AUROC": 0.5, "P-AUROC": None}}, "mean": {"I-AUROC": 0.5}}
    b = {"per_group": {"demo/x": {"I-AUROC": 0.875, "P-AUROC": 0.25}}, "mean": {"I-AUROC": 0.875}}
    lines = comparison_table({"A": a, "B": b}).splitlines()
    assert lines[0].startswith("| class | I-AUROC A | I-AUROC B | P-AUROC A | P-AUROC B |")
    assert lines[2].startswith("| demo/x | 50.0 | 87.5 | - | 25.0 |")
    assert lines[3].startswith("| **mean** | 50.0 | 87.5 | - | - |")


def _auroc_by_class(scores_csv: Path) -> dict[str, float]:
    """I-AUROC per class from the written image scores, labelled by the keys' defect field (scikit-learn)."""
    with open(scores_csv) as f:
        rows = list(csv.DictReader(f))
    by_group: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        dataset, cls, split, defect, _ = row["key"].split("/")
        labels, scores = by_group.setdefault(f"{dataset}/{cls}", ([], []))
        labels.append(int(defect != "good"))
        scores.append(float(row["score"]))
    return {group: roc_auc_score(labels, scores) for group, (labels, scores) in by_group.items()}


@pytest.mark.slow
def test_demo_pipeline_toy(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "pipelines.experiments.demo", "--out", str(out), "--toy",
                           "--port", "29547"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "shards" / "demo" / "manifest.json").read_text())
    classes = sorted(name.split("/")[1] for name in manifest["classes"])
    for run in ("joint_rd", "rd_ccl"):
        metrics = json.loads((out / run / "eval" / "metrics.json").read_text())
        assert sorted(g.split("/")[1] for g in metrics["per_group"]) == classes
        assert metrics["images"] == metrics["expected"] and not metrics["missing"]  # every test image scored
        want = _auroc_by_class(out / run / "eval" / "image_scores.csv")  # 6 significant digits: no ties here
        assert sorted(want) == sorted(metrics["per_group"])
        for group, value in want.items():
            assert metrics["per_group"][group]["I-AUROC"] == pytest.approx(value, abs=1e-9), (run, group)
        assert metrics["mean"]["I-AUROC"] == pytest.approx(sum(want.values()) / len(want), abs=1e-9)
        assert (out / run / "export" / "model.safetensors").is_file()
    # Joint RD is plain RD: no contrastive terms and no projector in its export.
    joint = (out / "joint_rd" / "export" / "config.yaml").read_text()
    assert "lambda_local: 0.0" in joint and "projector: none" in joint
    table = (out / "comparison.md").read_text()
    assert "I-AUROC Joint RD" in table and "I-AUROC RD + CCL" in table
    assert sum(line.startswith("| demo/") for line in table.splitlines()) == len(classes)
    joint, ccl = (json.loads((out / run / "eval" / "metrics.json").read_text()) for run in ("joint_rd", "rd_ccl"))
    for group in joint["per_group"]:  # the table shows each run's own numbers, in percent
        row = next(line for line in table.splitlines() if line.startswith(f"| {group} |"))
        cells = [c.strip() for c in row.split("|")[2:4]]
        assert cells == [f"{100 * joint['per_group'][group]['I-AUROC']:.1f}",
                         f"{100 * ccl['per_group'][group]['I-AUROC']:.1f}"], row
    assert table in proc.stdout
