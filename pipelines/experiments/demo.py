"""``make demo``: the main job end to end on the embedded demo data, offline, on CPU.

    python -m pipelines.experiments.demo --out runs/demo [--processes 2] [--toy]

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
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ccl.metrics.report import percent
from pipelines.experiments.compare import DEFAULT_MODELS, slug
from pipelines.experiments.jobs import REPO, Job, job_env, run, run_job

DEMO_CONFIG = REPO / "configs" / "demo.yaml"
MODELS = DEFAULT_MODELS  # name -> overrides on top of configs/demo.yaml
COLUMNS = (("I-AUROC", "I-AUROC"), ("P-AUROC", "P-AUROC"), ("PRO", "AUPRO"), ("I-AP", "I-AP"),
           ("P-AP", "P-AP"), ("I-F1max", "I-F1max"), ("P-F1max", "P-F1max"))
# Toy size: a few optimizer steps on a few images per class, so CI keeps the whole path working.
TOY_DATA = ["--per-class", "8", "--test-good", "2", "--test-defect", "3", "--size", "64"]
TOY_TRAIN = ["train.max_steps=2", "train.epochs=1", "data.image_size=64", "data.num_workers=0",
             "eval.num_workers=0", "tracking.vis_images=2", "tracking.tsne=false"]


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
    overrides = (f"run.name=demo-{slug(name)}", *MODELS[name], *(TOY_TRAIN if args.toy else []), *args.overrides)
    job = Job(out / slug(name), DEMO_CONFIG, overrides, (build,), vis=2 if args.toy else 4)
    return run_job(job, args.processes, args.port, env)


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per class and the mean, one column block per model (values in %)."""
    names = list(results)
    groups = sorted({g for r in results.values() for g in r.get("per_group", {})})
    header = ["class"] + [f"{col} {n}" for col, _ in COLUMNS for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(pick: Any) -> list[str]:
        return [percent(pick(results[n]).get(key)) for _, key in COLUMNS for n in names]

    for g in groups:
        lines.append("| " + " | ".join([g] + cells(lambda r, g=g: r.get("per_group", {}).get(g, {}))) + " |")
    lines.append("| **mean** | " + " | ".join(cells(lambda r: r.get("mean", {}))) + " |")
    return "\n".join(lines) + "\n"



def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="demo directory (shards, runs, comparison)")
    parser.add_argument("--processes", type=int, default=2, help="ranks per training/evaluation")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port of the ranks (default: a free one)")
    parser.add_argument("--toy", action="store_true", help="a few steps on a few images (CI)")
    parser.add_argument("overrides", nargs="*", help="extra a.b=value config overrides for both models")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    env = job_env(args.processes)
    started = time.time()
    build = build_shards(out, args.toy, env)
    results = {name: train_and_evaluate(name, build, out, args, env) for name in MODELS}
    table = comparison_table(results)
    (out / "comparison.md").write_text(table)
    print("\n" + table)
    print(f"demo finished in {time.time() - started:.0f} s; heatmaps and metrics under {out}/<model>/eval")


if __name__ == "__main__":
    main()
