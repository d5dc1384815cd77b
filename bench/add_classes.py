"""Adding classes to a trained model against retraining on every class, side by side in one run.

    python bench/add_classes.py --build runs/demo/shards/demo --new demo/gravel demo/tissue \
        --out runs/bench/add_classes [--config configs/demo.yaml] [--replay 0.25] [--processes 2] [k=v ...]

1. ``old``: a model trained on every class but ``--new`` (``data.classes``), scored on those classes;
2. ``added``: ``launch/add_classes.py`` trains ``--new`` into it with ``--replay`` of every batch from the
   old classes, scored on every class;
3. ``joint``: one model trained on every class from scratch, scored on every class.

Prints, per model, mean I-AUROC / P-AUROC / AUPRO over the old classes and over the new ones, and the
training wall time of each step (``added`` against ``joint``: what the new product costs). Every step is a
real CLI call; finished steps are skipped on a rerun (their times then read as 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccl.metrics.report import mean_over  # noqa: E402
from pipelines.experiments.jobs import REPO, Job, job_env, run, run_job  # noqa: E402
from pipelines.experiments.strategies import training_classes  # noqa: E402
from shard_format.builds import open_builds  # noqa: E402

METRICS = ("I-AUROC", "P-AUROC", "AUPRO")


def timed(step: Callable[[], dict]) -> tuple[dict, float]:
    started = time.time()
    result = step()
    return result, time.time() - started


def means(metrics: dict, classes: list[str]) -> str:
    scores = mean_over([metrics["per_group"][c] for c in classes if c in metrics["per_group"]])
    return " / ".join("-" if scores[m] is None else f"{100 * scores[m]:.1f}" for m in METRICS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", required=True, type=Path)
    p.add_argument("--new", required=True, nargs="+", help="the classes added later (dataset/class)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--replay", type=float, default=0.25)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    env = job_env(a.processes)
    classes = training_classes(open_builds([a.build]))
    old = [c for c in classes if c not in a.new]
    common = ("tracking.vis_every=0", "tracking.wandb.mode=disabled", *a.overrides)
    first = Job(a.out / "old", a.config, (f"data.classes=[{','.join(old)}]", *common,
                                         f"eval.classes=[{','.join(old)}]"), (a.build,))
    old_metrics, t_old = timed(lambda: run_job(first, a.processes, None, env))
    added = a.out / "added"

    def add() -> dict:
        if not (added / "eval" / "metrics.json").is_file():
            run([sys.executable, "launch/add_classes.py", "--export", str(a.out / "old" / "export"), "--shards",
                 str(a.build), "--classes", *a.new, "--out", str(added), "--replay", str(a.replay), "--processes",
                 str(a.processes), *common], env)
        return json.loads((added / "eval" / "metrics.json").read_text())

    added_metrics, t_added = timed(add)
    joint = Job(a.out / "joint", a.config, common, (a.build,))
    joint_metrics, t_joint = timed(lambda: run_job(joint, a.processes, None, env))
    print(f"old classes: {', '.join(old)}; new: {', '.join(a.new)}; replay {a.replay}")
    print(f"| model | old classes ({'/'.join(METRICS)}) | new classes | train + eval s |")
    print("|---|---|---|---|")
    print(f"| old ({len(old)} classes) | {means(old_metrics, old)} | - | {t_old:.0f} |")
    print(f"| old + added classes (replay) | {means(added_metrics, old)} | {means(added_metrics, a.new)} | "
          f"{t_added:.0f} |")
    print(f"| joint, all {len(classes)} classes | {means(joint_metrics, old)} | {means(joint_metrics, a.new)} | "
          f"{t_joint:.0f} |")


if __name__ == "__main__":
    main()
