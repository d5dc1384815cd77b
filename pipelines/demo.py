"""``make demo``: the main job end to end on the embedded demo data, offline, on CPU.

    python -m pipelines.demo --out runs/demo [--processes 2] [--toy]

1. build and verify the demo shards (real scikit-image textures and photographs, synthetic defects);
2. train Joint RD (no contrastive terms, no projector) and RD + CCL with the same budget, teacher
   (offline ImageNet MobileNetV2) and data, each with ``--processes`` ranks;
3. evaluate both with the streaming evaluator (heatmaps under ``OUT/<model>/eval``);
4. print and write (``OUT/comparison.md``) a side-by-side table per class and mean.

Every step is a real CLI call, so the demo exercises what users run. Finished steps are skipped
when the demo is run again (delete ``OUT`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ccl.metrics.report import percent

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
MODELS = {  # name -> overrides on top of configs/demo.yaml
    "Joint RD": ["loss.lambda_local=0", "loss.lambda_global=0", "model.projector=none"],
    "RD + CCL": [],
}
COLUMNS = (("I-AUROC", "I-AUROC"), ("P-AUROC", "P-AUROC"), ("PRO", "AUPRO"), ("I-AP", "I-AP"),
           ("P-AP", "P-AP"), ("I-F1max", "I-F1max"), ("P-F1max", "P-F1max"))
# Toy size: a few optimizer steps on a few images per class, so CI keeps the whole path working.
TOY_DATA = ["--per-class", "8", "--test-good", "2", "--test-defect", "3", "--size", "64"]
TOY_TRAIN = ["train.max_steps=2", "train.epochs=1", "data.image_size=64", "data.num_workers=0",
             "eval.num_workers=0", "tracking.vis_images=2", "tracking.tsne=false"]


def slug(name: str) -> str:
    """``"RD + CCL"`` -> ``"rd_ccl"``: the model's directory."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def launcher(processes: int, port: int) -> list[str]:
    """``accelerate launch`` that really starts ``processes`` CPU ranks (DESIGN.md section 7)."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    if processes <= 1:
        return [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]


def run(cmd: Sequence[str], env: Mapping[str, str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    started = time.time()
    result = subprocess.run(list(cmd), env=dict(env), cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"demo: step failed (exit {result.returncode}): {shlex.join(cmd)}")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def build_shards(out: Path, toy: bool, env: Mapping[str, str]) -> Path:
    shards = out / "shards"
    build = shards / "demo"
    if not (build / "manifest.json").is_file():
        roots = []
        if toy:  # a smaller demo folder, then built through the same source
            source = out / "toy_source"
            run([sys.executable, "shard_tools/demo_data.py", "--out", str(source), *TOY_DATA], env)
            roots = ["--root", f"demo={source}"]
        run([sys.executable, "shard_tools/build.py", "--datasets", "demo", "--out", str(shards),
             "--val-fraction", "0.15", *roots], env)
    run([sys.executable, "shard_tools/verify.py", str(build)], env)
    return build


def train_and_evaluate(name: str, build: Path, out: Path, args: argparse.Namespace, env: Mapping[str, str]) -> dict:
    run_dir = out / slug(name)
    metrics = run_dir / "eval" / "metrics.json"
    if not metrics.is_file():
        launch = launcher(args.processes, args.port)
        overrides = [f"run.dir={run_dir}", f"run.name=demo-{slug(name)}", f"data.shards=[{build}]",
                     *MODELS[name], *(TOY_TRAIN if args.toy else []), *args.overrides]
        if not (run_dir / "export" / "model.safetensors").is_file():
            run([*launch, "launch/train.py", "--config", str(DEMO_CONFIG), *overrides], env)
        eval_overrides = [o for o in overrides if o.startswith("eval.")]
        run([*launch, "launch/evaluate.py", "--checkpoint", str(run_dir / "export"), "--shards", str(build),
             "--out", str(run_dir / "eval"), "--vis", "2" if args.toy else "4", *eval_overrides], env)
    return json.loads(metrics.read_text())


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per class and the mean, one column block per model (values in %)."""
    names = list(results)
    groups = sorted({g for r in results.values() for g in r.get("per_group", {})})
    header = ["class"] + [f"{col} {n}" for col, _ in COLUMNS for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(pick: Any) -> list[str]:
        return [percent(pick(results[n]).get(key)) for _, key in COLUMNS for n in names]

    for g in groups:
        lines.append("| " + " | ".join([g] + cells(lambda r: r.get("per_group", {}).get(g, {}))) + " |")
    lines.append("| **mean** | " + " | ".join(cells(lambda r: r.get("mean", {}))) + " |")
    return "\n".join(lines) + "\n"



def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="demo directory (shards, runs, comparison)")
    parser.add_argument("--processes", type=int, default=2, help="ranks per training/evaluation")
    parser.add_argument("--port", type=int, default=29533, help="rendezvous port of the ranks")
    parser.add_argument("--toy", action="store_true", help="a few steps on a few images (CI)")
    parser.add_argument("overrides", nargs="*", help="extra a.b=value config overrides for both models")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if args.processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"  # CPU ranks with gloo; see DESIGN.md section 7
    started = time.time()
    build = build_shards(out, args.toy, env)
    results = {name: train_and_evaluate(name, build, out, args, env) for name in MODELS}
    table = comparison_table(results)
    (out / "comparison.md").write_text(table)
    print("\n" + table)
    print(f"demo finished in {time.time() - started:.0f} s; heatmaps and metrics under {out}/<model>/eval")


if __name__ == "__main__":
    main()
