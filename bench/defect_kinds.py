"""I-AUROC per defect kind: does a model miss the defects made of another class's content?

    python bench/defect_kinds.py runs/fig1a/lookalike [--budget 24]

For every model folder of a comparison (``OUT/<bench>/<model>/e<budget>/s<seed>``) it reads the image
scores its evaluation wrote (``eval/image_scores.csv``; a one-for-one run's scores are its class models',
in ``stages/*/eval/``) and prints, per defect kind, the I-AUROC of that kind's images against the normal
images of the same class, averaged over classes and seeds. On the lookalike benchmark the ``foreign`` kind
(a patch of a look-alike class) is the inter-class confusion the paper's method targets.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

from sklearn.metrics import roc_auc_score


def scores_of(run: Path) -> list[dict[str, str]]:
    """Every scored image of a run: its own evaluation, or its stages' (one-for-one)."""
    files = [run / "eval" / "image_scores.csv"] if not (run / "stages").is_dir() else []
    files = [f for f in files if f.is_file()] or sorted(run.glob("stages/*/eval/image_scores.csv"))
    rows: list[dict[str, str]] = []
    for f in files:
        with open(f) as handle:
            rows += list(csv.DictReader(handle))
    return rows


def kind_auroc(rows: list[dict[str, str]]) -> dict[str, float]:
    """Mean over classes of the I-AUROC of each defect kind against that class's normal images."""
    by_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        kind = r["key"].split("/")[3]  # dataset/class/split/defect/stem
        by_class[r["group"]][kind].append(float(r["score"]))
    out: dict[str, list[float]] = defaultdict(list)
    for kinds in by_class.values():
        normal = kinds.get("good", [])
        for kind, scores in kinds.items():
            if kind != "good" and normal:
                labels = [0] * len(normal) + [1] * len(scores)
                out[kind].append(roc_auc_score(labels, normal + scores))
    return {kind: statistics.fmean(v) for kind, v in sorted(out.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, help="OUT/<bench> of launch/compare.py")
    p.add_argument("--budget", default="*", help="epochs folder to read (default: every one)")
    a = p.parse_args()
    table: dict[str, dict[str, list[float]]] = {}
    for run in sorted(a.bench.glob(f"*/e{a.budget}/s*")):
        rows = scores_of(run)
        if rows:
            for kind, value in kind_auroc(rows).items():
                table.setdefault(run.parts[-3], {}).setdefault(kind, []).append(value)
    kinds = sorted({k for per in table.values() for k in per})
    print("| model | seeds | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for model, per in table.items():
        seeds = max(len(v) for v in per.values())
        cells = [f"{100 * statistics.fmean(per[k]):.1f}" if k in per else "-" for k in kinds]
        print(f"| {model} | {seeds} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
