"""Accuracy per precision: a trained export at fp32, fp16 and INT8 (ONNX Runtime, OpenVINO), each evaluated on
the test set like the training export, against the fp32 graph of the same runtime.

    python bench/precision_accuracy.py --export runs/demo/rd_ccl/export --shards runs/demo/shards/demo \
        [--export ... --shards ...] [--out bench/results/precision-accuracy.md]

Each (--export, --shards) pair is one trained model and the build it was trained and evaluated on (INT8 is
calibrated on that build's normal training images). Printed per model: I-AUROC / P-AUROC / AUPRO of every
graph, the difference to fp32 (goal: within 0.5 points), and the decision agreement at the export's stored
image threshold (the share of test images whose decision equals the fp32 graph's; goal >= 99 %).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("I-AUROC", "P-AUROC", "AUPRO")
CANDIDATES = [(fmt, precision) for fmt in ("onnx", "openvino") for precision in ("fp32", "fp16", "int8")]


def decisions(eval_dir: Path, threshold: float) -> dict[str, bool]:
    with open(eval_dir / "image_scores.csv") as f:
        return {row["key"]: float(row["score"]) >= threshold for row in csv.DictReader(f)}


def bench_export(export: Path, shards: str, work: Path) -> list[str]:
    from pipelines.deploy.evaluate_deployed import run_deployed_evaluation
    from pipelines.deploy.export import export_model

    threshold = json.loads((export / "info.json").read_text()).get("image_threshold")
    results, said = {}, {}
    for fmt, precision in CANDIDATES:
        out = work / f"{fmt}-{precision}"
        info = export_model(export, fmt, out, precision=precision, calibration_shards=[shards])
        result = run_deployed_evaluation(out / info["model_file"], [shards], out / "eval", vis=0,
                                         overrides=["eval.num_workers=0"])
        results[fmt, precision] = {m: 100 * result["mean"][m] for m in METRICS}
        said[fmt, precision] = decisions(out / "eval", threshold) if threshold is not None else None
        print(f"  {fmt} {precision}: " + " / ".join(f"{results[fmt, precision][m]:.1f}" for m in METRICS), flush=True)
    rows = []
    for fmt, precision in CANDIDATES:
        base, got = results[fmt, "fp32"], results[fmt, precision]
        cells = [f"{got[m]:.1f}" for m in METRICS] + [f"{got[m] - base[m]:+.1f}" for m in METRICS]
        if said[fmt, precision] is None:
            agree = "no threshold"
        else:
            same = sum(said[fmt, precision][k] == v for k, v in said[fmt, "fp32"].items())
            agree = f"{100 * same / len(said[fmt, 'fp32']):.1f} %"
        rows.append(f"| {export} | {fmt} | {precision} | " + " | ".join(cells) + f" | {agree} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="append", required=True, help="training export (evaluated: its threshold)")
    p.add_argument("--shards", action="append", required=True, help="its build (one per --export)")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    if len(args.export) != len(args.shards):
        p.error("give one --shards per --export")
    lines = ["| model | runtime | precision | I-AUROC | P-AUROC | AUPRO | Δ I-AUROC | Δ P-AUROC | Δ AUPRO | "
             "decisions as fp32 at the stored threshold |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (export, shards) in enumerate(zip(args.export, args.shards, strict=True)):
            print(f"\n{export} on {shards}", flush=True)
            lines += bench_export(Path(export), shards, Path(tmp) / str(i))
    print("\n" + "\n".join(lines))
    if args.out:
        Path(args.out).write_text(f"`python bench/precision_accuracy.py {' '.join(sys.argv[1:])}`\n\n"
                                  + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
