"""Image-level confusion measured with many images: does a model miss another class's content?

    python bench/foreign_patches.py runs/fig1a/lookalike [--budget 24] [--per-class 32] [--out FILE.md]

The lookalike test set holds 8 normal and 4 foreign-patch images per class, so one class's I-AUROC on the
foreign patches moves in steps of 3 points. This bench draws, for every class, ``--per-class`` fresh normal
crops, as many crops with a pasted piece of a look-alike class (same group: "near", the benchmark's
``foreign`` kind) and as many with a piece of a class of another group ("far"), all from the photographs'
test rows (never trained on), the same images for every model. It scores them with every model of a
comparison (``OUT/<model>/e<budget>/s<seed>``; one-for-one: each class with its own class model;
sequential / continual: the last stage's model) and prints, per model, the I-AUROC of "near" and "far"
against the normal crops (mean over classes, mean +- std over seeds) and the paired difference to Joint RD.

The paper's explanation of the joint model's loss is that a model trained on every class reconstructs
another class's content inside an image and misses it; "far" tests that with content no class model of
that group ever saw, "near" with content that looks like the class's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccl.models.inference_graph import InferenceGraph  # noqa: E402
from pipelines.base.model import load_export  # noqa: E402
from shard_tools.demo_data import random_crop, test_rows  # noqa: E402
from shard_tools.lookalike_data import GROUPS, load_sources, paste_foreign  # noqa: E402

KINDS = ("near", "far")
REFERENCE = "joint_rd"


def draw_sets(sources: dict[str, np.ndarray], groups: dict[str, dict[str, str]], per_class: int,
              seed: int, size: int = 128) -> dict[str, dict[str, np.ndarray]]:
    """{class: {"good" | "near" | "far": (N, size, size, 3) uint8 RGB}} from the photographs' test rows; the
    near / far pieces come from a random class of the same / of another group."""
    group_of = {name: group for group, classes in groups.items() for name in classes}
    names = sorted(group_of)
    sets = {}
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        donors = {"near": [o for o in names if group_of[o] == group_of[name] and o != name],
                  "far": [o for o in names if group_of[o] != group_of[name]]}
        out: dict[str, list[np.ndarray]] = {"good": [], "near": [], "far": []}
        for _ in range(per_class):
            out["good"].append(random_crop(sources[name], test_rows(sources[name]), size, rng))
            for kind in KINDS:
                crop = random_crop(sources[name], test_rows(sources[name]), size, rng)
                donor = sources[donors[kind][int(rng.integers(len(donors[kind])))]]
                out[kind].append(paste_foreign(crop, random_crop(donor, test_rows(donor), size, rng), rng)[0])
        sets[name] = {kind: np.stack(images)[..., ::-1].copy() for kind, images in out.items()}  # BGR -> RGB
    return sets


def exports_of(run: Path, classes: list[str]) -> dict[str, Path]:
    """The export that scores each class: the run's own, a one-for-one run's class model, or a staged run's
    last stage."""
    if (run / "export").is_dir():
        return {name: run / "export" for name in classes}
    plan = json.loads((run / "strategy.json").read_text())
    folders = [stage_folder(run, stage["name"]) for stage in plan["stages"]]
    if plan["mode"] != "one-for-one":
        return {name: folders[-1] / "export" for name in classes}
    stages = {stage["classes"][0].split("/", 1)[1]: folder / "export" for stage, folder in zip(plan["stages"], folders)}
    missing = sorted(set(classes) - set(stages))
    if missing:
        raise SystemExit(f"{run / 'strategy.json'}: no class model for {missing}")
    return {name: stages[name] for name in classes}


def stage_folder(run: Path, name: str) -> Path:
    """``run/stages/<name>``, refusing a recorded name that is not one plain folder name (it is read from a file)."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise SystemExit(f"{run / 'strategy.json'}: stage name {name!r} is not a folder name under {run / 'stages'}")
    return run / "stages" / name


@torch.no_grad()
def scores(graph: InferenceGraph, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Image scores of a (N, S, S, 3) uint8 RGB array."""
    return np.concatenate([graph.run_numpy(images[i:i + batch])[1] for i in range(0, len(images), batch)])


def run_aurocs(run: Path, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """{kind: mean over classes of that kind's I-AUROC against the class's normal crops} for one run."""
    models: dict[Path, torch.nn.Module] = {}
    per_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for name, export in exports_of(run, sorted(sets)).items():
        if export not in models:
            models = {export: load_export(export)[0]}  # one model in memory at a time
        graph = InferenceGraph(models[export], class_id=class_id(models[export], name))
        good = scores(graph, sets[name]["good"])
        for kind in KINDS:
            bad = scores(graph, sets[name][kind])
            per_kind[kind].append(roc_auc_score([0] * len(good) + [1] * len(bad), np.concatenate([good, bad])))
    return {kind: 100 * statistics.fmean(values) for kind, values in per_kind.items()}


def class_id(model: torch.nn.Module, name: str) -> int | None:
    """The index of ``lookalike/<name>`` among a class-conditioned model's classes (its images are scored under
    their own class); None for a model that scores every image alike."""
    if model.condition is None:
        return None
    return model.condition.class_names.index(f"lookalike/{name}")


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: per model, near / far mean +- std over seeds and the paired difference to Joint RD."""
    lines = ["| model | seeds | near (same group) | far (other group) | Delta vs Joint RD: near | far |",
             "|---|---|---|---|---|---|"]
    reference = results.get(REFERENCE, {})
    for model, by_seed in results.items():
        cells = []
        for kind in KINDS:
            values = [r[kind] for r in by_seed.values()]
            cells.append(f"{statistics.fmean(values):.1f} +- {statistics.pstdev(values):.1f}")
        for kind in KINDS:
            diffs = [r[kind] - reference[s][kind] for s, r in by_seed.items() if s in reference]
            cells.append(f"{statistics.fmean(diffs):+.1f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"
                         if diffs and model != REFERENCE else "")
        lines.append(f"| {model} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, help="OUT/<bench> of launch/compare.py on the lookalike benchmark")
    p.add_argument("--budget", default="24", help="epochs folder to read")
    p.add_argument("--per-class", type=int, default=32, help="normal, near and far crops per class")
    p.add_argument("--seed", type=int, default=99, help="of the drawn crops (the benchmark's own build uses 0)")
    p.add_argument("--models", nargs="*", help="model folders to score (default: every one)")
    p.add_argument("--out", type=Path, help="also write the table here")
    a = p.parse_args()
    torch.set_num_threads(1)
    sets = draw_sets(load_sources(), GROUPS, a.per_class, a.seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for run in sorted(a.bench.glob(f"*/e{a.budget}/s*")):
        model = run.parts[-3]
        if (a.models and model not in a.models) or not (run / "eval" / "metrics.json").is_file():
            continue  # unfinished runs are not scored
        results.setdefault(model, {})[run.name] = run_aurocs(run, sets)
        print(f"{model} {run.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[model][run.name].items()),
              flush=True)
    text = (f"{a.per_class} normal + {a.per_class} near + {a.per_class} far crops per class, draw seed {a.seed}, "
            f"{a.bench} e{a.budget}\n\n" + table(results))
    print(text, end="")
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
