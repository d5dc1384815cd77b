"""Accuracy per precision: a trained export at fp32, fp16 and INT8 (ONNX Runtime, OpenVINO), each evaluated on
the test set like the training export, against the fp32 graph of the same runtime.

    python bench/precision_accuracy.py --export runs/demo/rd_ccl/export --shards runs/demo/shards/demo \
        [--export ... --shards ...] [--qat-epochs 3] [--out bench/results/precision-accuracy.md]

Each (--export, --shards) pair is one trained model and the build it was trained and evaluated on (INT8 is
calibrated on that build's normal training images). Printed per model: I-AUROC / P-AUROC / AUPRO of every
graph, the difference to fp32 (goal: within 0.5 points), and the decision agreement at the export's stored
image threshold (the share of test images whose decision equals the fp32 graph's; goal >= 99 %).
"fp32 qat" / "int8 qat": the export fine-tuned for INT8 first (``launch/qat.py``, --qat-epochs; 0 leaves it
out), evaluated for its own threshold, then exported at fp32 / INT8; compared with the original fp32 graph (what
the line loses against the model it trained), decisions each at its own export's threshold; the last column
compares INT8's decisions with the fine-tuned fp32 graph's.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("I-AUROC", "P-AUROC", "AUPRO")
CANDIDATES = [(fmt, precision) for fmt in ("onnx", "openvino") for precision in ("fp32", "fp16", "int8")]
QAT = [(fmt, precision) for fmt in ("onnx", "openvino") for precision in ("fp32 qat", "int8 qat")]


def decisions(eval_dir: Path, threshold: float) -> dict[str, bool]:
    with open(eval_dir / "image_scores.csv") as f:
        return {row["key"]: float(row["score"]) >= threshold for row in csv.DictReader(f)}


def agreement(got: dict[str, bool] | None, want: dict[str, bool] | None) -> str:
    if got is None or want is None:
        return "no threshold"
    return f"{100 * sum(got[k] == v for k, v in want.items()) / len(want):.1f} %"


def fine_tuned(export: Path, shards: str, work: Path, epochs: int) -> Path:
    """launch/qat.py's export of ``export``, evaluated (its own threshold)."""
    from pipelines.deploy.qat import finetune_for_int8
    from pipelines.evaluation.evaluate import run_evaluation

    out = work / "qat"
    info = finetune_for_int8(export, out, [shards], epochs=epochs)
    print(f"  fine-tuned for INT8 in {info['qat']['seconds']:.0f} s, simulated INT8 loss "
          + " -> ".join(f"{v:.3f}" for v in info["qat"]["simulated_int8_loss"]), flush=True)
    result = run_evaluation(out, [shards], work / "qat-eval", vis=0, overrides=["eval.num_workers=0"])
    print("  fine-tuned, torch fp32: " + " / ".join(f"{100 * result['mean'][m]:.1f}" for m in METRICS), flush=True)
    return out


def bench_export(export: Path, shards: str, work: Path, qat_epochs: int) -> list[str]:
    from pipelines.deploy.evaluate_deployed import run_deployed_evaluation
    from pipelines.deploy.export import export_model

    sources = {c: export for c in CANDIDATES}
    if qat_epochs:
        sources.update(dict.fromkeys(QAT, fine_tuned(export, shards, work, qat_epochs)))
    results, said = {}, {}
    for (fmt, precision), source in sources.items():
        out = work / f"{fmt}-{precision}".replace(" ", "-")
        info = export_model(source, fmt, out, precision=precision.split()[0], calibration_shards=[shards])
        result = run_deployed_evaluation(out / info["model_file"], [shards], out / "eval", vis=0,
                                         overrides=["eval.num_workers=0"])
        results[fmt, precision] = {m: 100 * result["mean"][m] for m in METRICS}
        threshold = info["image_threshold"]
        said[fmt, precision] = decisions(out / "eval", threshold) if threshold is not None else None
        print(f"  {fmt} {precision}: " + " / ".join(f"{results[fmt, precision][m]:.1f}" for m in METRICS), flush=True)
    rows = []
    for fmt, precision in sources:
        base, got = results[fmt, "fp32"], results[fmt, precision]
        cells = [f"{got[m]:.1f}" for m in METRICS] + [f"{got[m] - base[m]:+.1f}" for m in METRICS]
        agree = agreement(said[fmt, precision], said[fmt, "fp32"])
        own = agreement(said[fmt, precision], said[fmt, "fp32 qat"]) if precision == "int8 qat" else ""
        rows.append(f"| {export} | {fmt} | {precision} | " + " | ".join(cells) + f" | {agree} | {own} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="append", required=True, help="training export (evaluated: its threshold)")
    p.add_argument("--shards", action="append", required=True, help="its build (one per --export)")
    p.add_argument("--qat-epochs", type=int, default=3, help="epochs of launch/qat.py before 'int8 qat' (0: none)")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    if len(args.export) != len(args.shards):
        p.error("give one --shards per --export")
    lines = ["| model | runtime | precision | I-AUROC | P-AUROC | AUPRO | Δ I-AUROC | Δ P-AUROC | Δ AUPRO | "
             "decisions as fp32 at the stored threshold | as the fine-tuned fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (export, shards) in enumerate(zip(args.export, args.shards, strict=True)):
            print(f"\n{export} on {shards}", flush=True)
            lines += bench_export(Path(export), shards, Path(tmp) / str(i), args.qat_epochs)
    print("\n" + "\n".join(lines))
    if args.out:
        Path(args.out).write_text(f"`python bench/precision_accuracy.py {' '.join(sys.argv[1:])}`\n\n"
                                  + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
