"""Seeds x models x budgets on any shard builds: the research loop behind every claim of the README.

    python launch/compare.py --config configs/demo.yaml --bench demo=runs/demo/shards/demo \\
        --model "Joint RD=loss.lambda_local=0 loss.lambda_global=0 model.projector=none" --model "RD + CCL=" \\
        --seeds 0 1 2 --budgets 16 48 --out runs/compare [--jobs 1] [--processes 2] [k=v ...]

Every (benchmark, model, budget, seed) is one job of ``pipelines.experiments.jobs`` (real train and evaluate CLIs)
in ``OUT/<bench>/<model>/e<budget>/s<seed>``; finished jobs are skipped, so a stopped comparison
resumes and a grown one only runs what is new. ``run.seed`` changes the student's initialisation,
the data order and the augmentation. The first model is the reference: every other model gets paired
differences per seed (same seed, same data order) against it. Outputs: ``OUT/comparison.md`` (mean
+- std over seeds per benchmark and budget, paired differences, per-class I-AUROC), ``OUT/results.csv``
(one row per job and group) and ``OUT/budget.png`` (metric vs budget per model).
"""

from __future__ import annotations

import csv
import math
import queue
import re
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.base.config import ConfigError, load_config
from pipelines.base.exits import InputError
from pipelines.experiments.jobs import Job, job_env, run_job
from pipelines.experiments.strategies import run_strategy

# The two models of every comparison unless others are given: name -> overrides.
JOINT_RD = "Joint RD"
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    JOINT_RD: ("loss.lambda_local=0", "loss.lambda_global=0", "model.projector=none"),
    "RD + CCL": (),
}
TABLE_METRICS = ("I-AUROC", "P-AUROC", "AUPRO", "I-AP", "P-AP")
PLOT_METRICS = ("I-AUROC", "P-AUROC", "AUPRO")


@dataclass(frozen=True)
class Cell:
    """One job of the grid."""

    bench: str
    model: str
    budget: int
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.bench, self.model, self.budget


@dataclass(frozen=True)
class Grid:
    config: Path
    benches: Mapping[str, tuple[Path, ...]]  # name -> builds trained and evaluated together
    models: Mapping[str, tuple[str, ...]]  # name -> overrides; the first is the reference
    seeds: tuple[int, ...]
    budgets: tuple[int, ...]  # train.epochs
    overrides: tuple[str, ...] = ()  # applied to every job, after the model's
    weights: str = "export"
    vis: int = 4  # heatmaps per group written by each evaluation

    def cells(self) -> list[Cell]:
        """Seed by seed, so that a stopped comparison has whole seeds of every model."""
        return [Cell(b, m, e, s) for s in self.seeds for b in self.benches for e in self.budgets for m in self.models]

    def job(self, cell: Cell, out: Path) -> Job:
        """The cell's job; a staged strategy row (``strategy.mode=...``) runs its stages in the job's folder."""
        run_dir = out / slug(cell.bench) / slug(cell.model) / f"e{cell.budget}" / f"s{cell.seed}"
        overrides = (f"run.seed={cell.seed}", f"train.epochs={cell.budget}", f"run.name={slug(cell.model)}",
                     *self.models[cell.model], *self.overrides)
        return Job(run_dir, self.config, overrides, self.benches[cell.bench], vis=self.vis, weights=self.weights)


def slug(name: str) -> str:
    """``"RD + CCL"`` -> ``"rd_ccl"``: a directory name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"


def parse_named(items: Sequence[str], what: str) -> dict[str, tuple[str, ...]]:
    """``["NAME=a b c", ...]`` -> {NAME: (a, b, c)} (the value is split like a shell line)."""
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{what} {item!r} is not of the form NAME=VALUE")
        if name.strip() in out:
            raise InputError(f"{what} {name.strip()!r} is given twice")
        out[name.strip()] = tuple(shlex.split(value))
    return out


# ---------------------------------------------------------------- running


def run_grid(grid: Grid, out: Path, jobs: int = 1, processes: int = 2, port: int = 29600,
             threads: int = 1) -> list[dict[str, Any]]:
    """Run every cell (``jobs`` at a time), then return one record per cell (metrics None: the job failed)."""
    cells = grid.cells()
    ports: queue.Queue[int] = queue.Queue()
    for i in range(max(1, jobs)):
        ports.put(port + 10 * i)
    env = job_env(processes, threads)
    started, done = time.time(), [0]

    def one(cell: Cell) -> dict[str, Any]:
        job = grid.job(cell, out)
        p = ports.get()
        log = job.run_dir / "job.log" if jobs > 1 else None
        try:
            metrics = run_cell(grid, job, processes, p, env, log)
        except SystemExit as err:  # one failed job must not cost the others their results
            print(f"FAILED {cell.bench} | {cell.model} | {cell.budget} ep | seed {cell.seed}: {err}", flush=True)
            return {"cell": cell, "metrics": None}
        finally:
            ports.put(p)
        done[0] += 1
        mean = metrics.get("mean", {})
        print(f"[{done[0]}/{len(cells)} {time.time() - started:.0f} s] {cell.bench} | {cell.model} | "
              f"{cell.budget} ep | seed {cell.seed}: " +
              " ".join(f"{m} {_pct(mean.get(m))}" for m in PLOT_METRICS), flush=True)
        return {"cell": cell, "metrics": metrics}

    if jobs <= 1:
        return [one(c) for c in cells]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cells))


def run_cell(grid: Grid, job: Job, processes: int, port: int, env: Mapping[str, str],
             log: Path | None) -> dict[str, Any]:
    """One job: an ordinary training, or the stages of the row's ``strategy.mode``
    (pipelines.experiments.strategies)."""
    try:
        cfg = load_config(grid.config, list(job.overrides))
    except ConfigError:  # a bad row fails as its own job (named, its log kept), not the whole comparison
        return run_job(job, processes, port, env, log)
    if cfg.strategy.mode == "joint":
        return run_job(job, processes, port, env, log)
    return run_strategy(job, cfg, processes, port, env, log)


# ---------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def overall(records: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, str, int], dict[int, float]]:
    """{(bench, model, budget): {seed: mean-over-groups metric}} where defined."""
    out: dict[tuple[str, str, int], dict[int, float]] = {}
    for r in records:
        value = r["metrics"].get("mean", {}).get(metric)
        if value is not None:
            out.setdefault(r["cell"].key, {})[r["cell"].seed] = float(value)
    return out


def per_class(records: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, str, int], dict[str, list[float]]]:
    """{(bench, model, budget): {group: [metric per seed]}}."""
    out: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for r in records:
        for group, scores in r["metrics"].get("per_group", {}).items():
            if scores.get(metric) is not None:
                out.setdefault(r["cell"].key, {}).setdefault(group, []).append(float(scores[metric]))
    return out


def paired(reference: Mapping[int, float], other: Mapping[int, float]) -> list[float]:
    """other - reference for every seed both have."""
    return [other[s] - reference[s] for s in sorted(set(reference) & set(other))]


# ---------------------------------------------------------------- reports


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _pm(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def _diff(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    wins = sum(v > 0 for v in values)
    return f"{100 * m:+.1f} ± {100 * s:.1f} ({wins}/{len(values)})"


def comparison_markdown(grid: Grid, records: Sequence[Mapping[str, Any]]) -> str:
    """Per benchmark and budget: mean +- std per model, paired differences to the reference, per-class I-AUROC."""
    by_metric = {m: overall(records, m) for m in TABLE_METRICS}
    classes = per_class(records, "I-AUROC")
    models = list(grid.models)
    ref = models[0]
    lines = [f"Seeds {', '.join(map(str, grid.seeds))}; values in % (mean ± std over seeds); Δ: paired difference "
             f"to {ref} per seed, mean ± std (seeds where it is positive / seeds).", ""]
    for bench in grid.benches:
        for budget in grid.budgets:
            lines += [f"## {bench}, {budget} epochs", "", "| model | seeds | " + " | ".join(TABLE_METRICS) + " |",
                      "|---|---|" + "---|" * len(TABLE_METRICS)]
            for model in models:
                key = (bench, model, budget)
                n = len(by_metric["I-AUROC"].get(key, {}))
                cells = [_pm(list(by_metric[m].get(key, {}).values())) for m in TABLE_METRICS]
                lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
            for model in models[1:]:
                key, rkey = (bench, model, budget), (bench, ref, budget)
                diffs = [paired(by_metric[m].get(rkey, {}), by_metric[m].get(key, {})) for m in TABLE_METRICS]
                lines.append(f"| Δ {model} | {len(diffs[0])} | " + " | ".join(_diff(d) for d in diffs) + " |")
            groups = sorted({g for m in models for g in classes.get((bench, m, budget), {})})
            if groups:
                lines += ["", "I-AUROC per class:", "", "| class | " + " | ".join(models) + " |",
                          "|---|" + "---|" * len(models)]
                for g in groups:
                    row = [_pm(classes.get((bench, m, budget), {}).get(g, [])) for m in models]
                    lines.append(f"| {g} | " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One row per job and group (group "mean" = the mean over groups)."""
    metrics = ("I-AUROC", "P-AUROC", "AUPRO", "I-AP", "P-AP", "I-F1max", "P-F1max")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bench", "model", "budget", "seed", "group", *metrics])
        for r in records:
            c, m = r["cell"], r["metrics"]
            rows = [("mean", m.get("mean", {}))] + sorted(m.get("per_group", {}).items())
            for group, scores in rows:
                writer.writerow([c.bench, c.model, c.budget, c.seed, group,
                                 *["" if scores.get(k) is None else f"{scores[k]:.6f}" for k in metrics]])


def budget_plot(grid: Grid, records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Metric vs budget per model (mean +- std over seeds), one row of panels per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(grid.benches)
    fig, axes = plt.subplots(len(benches), len(PLOT_METRICS), figsize=(4.2 * len(PLOT_METRICS), 3.2 * len(benches)),
                             squeeze=False)
    for row, bench in enumerate(benches):
        for col, metric in enumerate(PLOT_METRICS):
            ax = axes[row][col]
            values = overall(records, metric)
            for model in grid.models:
                points = [(b, mean_std(list(values[(bench, model, b)].values())))
                          for b in grid.budgets if values.get((bench, model, b))]
                if points:
                    ax.errorbar([p[0] for p in points], [100 * p[1][0] for p in points],
                                yerr=[100 * p[1][1] for p in points], marker="o", capsize=3, label=model)
            ax.set_title(f"{bench}: {metric}")
            ax.set_xlabel("epochs")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(grid: Grid, records: Sequence[Mapping[str, Any]], out: Path) -> str:
    """Write comparison.md, results.csv and budget.png; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(grid, records)
    (out / "comparison.md").write_text(text)
    write_csv(records, out / "results.csv")
    budget_plot(grid, records, out / "budget.png")
    return text


def finished(grid: Grid, out: Path) -> list[dict[str, Any]]:
    """Records of the cells that have been evaluated already (a comparison still running, or stopped)."""
    import json

    jobs = [(c, grid.job(c, out)) for c in grid.cells()]
    return [{"cell": c, "metrics": json.loads(j.metrics_path.read_text())} for c, j in jobs if j.metrics_path.is_file()]


def main_grid(grid: Grid, out: Path, jobs: int, processes: int, port: int, threads: int, dry_run: bool,
              report_only: bool = False) -> int:
    """Run (or list) the grid and write the reports; the entry point of launch/compare.py."""
    if dry_run:
        for cell in grid.cells():
            job = grid.job(cell, out)
            print(f"{job.run_dir}: {shlex.join(job.overrides)}")
        return 0
    records = finished(grid, out) if report_only else run_grid(grid, out, jobs, processes, port, threads)
    failed = [r["cell"] for r in records if r["metrics"] is None]
    records = [r for r in records if r["metrics"] is not None]
    print("\n" + report(grid, records, out))
    print(f"tables: {out / 'comparison.md'}; every job: {out / 'results.csv'}; plot: {out / 'budget.png'}",
          file=sys.stderr)
    if failed:
        print(f"{len(failed)} job(s) failed (left out of the tables; their logs are in their run folders): " +
              "; ".join(f"{c.bench} | {c.model} | {c.budget} ep | seed {c.seed}" for c in failed), file=sys.stderr)
        return 1
    return 0
