"""The training strategies of the paper's Fig. 1a: how the classes reach the model, each as real trainings.

    joint         one training on every class at once (Joint RD, or RD + CCL: the loss decides), one evaluation
    one-for-one   one model per class (``data.classes=[c]``), each scored on its own class only; the per-class
                  results are averaged like one model's (``ccl.metrics.report.summarize``)
    sequential    the classes one after another in ``strategy.order``, each stage starting from the previous
                  stage's export (``train.init_from``) and training ``strategy.stage_epochs`` on its class
                  alone; the last stage's model is scored on every class
    continual     sequential with experience replay: ``strategy.replay_fraction`` of every batch is drawn
                  from the earlier classes' training samples (``data.replay_classes``)

    metrics = run_strategy(job, cfg, processes=2, port=None, env=job_env(2))      # from launch/compare.py rows
    python launch/train.py --config configs/demo.yaml strategy.mode=sequential --processes 2     # or alone
    python launch/add_classes.py --export RUN/export --shards OLD NEW --classes new/a --out RUN2   # a new product

A staged strategy runs in ``RUN``: ``RUN/stages/NN-<class>/`` is one ordinary run per stage (config, log,
exports; one-for-one also its evaluation), ``RUN/strategy.json`` records the mode, class order and
epochs per stage, and ``RUN/eval/metrics.json`` the strategy's result (``"strategy"`` names it). Each
stage is a joint training of its own classes through the real ``launch/train.py``; finished stages are
skipped, so a stopped strategy resumes where it stopped. ``data.classes`` (when given) limits the stages to
those classes; otherwise they cover every training class of the builds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ccl.metrics.report import summarize
from pipelines.base.config import Config, ConfigError
from pipelines.base.distributed import world_from_env
from pipelines.base.model import export_config, read_info
from pipelines.data.train_classes import check_selection
from pipelines.experiments.jobs import Job, evaluate_job, job_env, run_job, train_job
from shard_format.atomic import write_atomic
from shard_format.builds import ShardSet, open_builds

STAGED = ("one-for-one", "sequential", "continual")


@dataclass(frozen=True)
class Stage:
    name: str  # folder under RUN/stages
    classes: tuple[str, ...]  # trained in this stage
    overrides: tuple[str, ...]  # after the strategy's own: the stage's classes, start and budget
    scored: bool  # evaluated on its own (one-for-one)


def training_classes(shard_set: ShardSet) -> list[str]:
    """Every "dataset/class" with training samples, in the class index's order."""
    have = {f"{m['dataset']}/{c}" for m in shard_set.manifests for c in m.get("counts", {}).get("train", {})}
    return [name for name in shard_set.class_names if name in have]


def strategy_classes(cfg: Config, shard_set: ShardSet) -> list[str]:
    """The classes the strategy's stages cover: ``data.classes`` when given (checked against the builds), else
    every training class."""
    if not cfg.data.classes:
        return training_classes(shard_set)
    check_selection(cfg, shard_set)
    return [name for name in training_classes(shard_set) if name in cfg.data.classes]


def class_order(cfg: Config, classes: list[str]) -> list[str]:
    """``strategy.order`` (a permutation of every training class), or the classes by name."""
    order = list(cfg.strategy.order)
    if not order:
        return sorted(classes)
    if sorted(order) != sorted(classes):
        raise ConfigError(f"strategy.order={order} must list every training class once: {sorted(classes)}")
    return order


def stage_plan(cfg: Config, classes: list[str], run_dir: Path) -> list[Stage]:
    """The stages of ``cfg.strategy.mode`` over ``classes`` (see the module docstring)."""
    s = cfg.strategy
    epochs = s.stage_epochs or cfg.train.epochs
    order = class_order(cfg, classes)
    stages: list[Stage] = []
    for k, name in enumerate(order):
        folder = run_dir / "stages" / f"{k + 1:02d}-{name.replace('/', '_')}"
        common = (f"run.dir={folder}", f"data.classes=[{name}]", f"train.epochs={epochs}", "strategy.mode=joint")
        if s.mode == "one-for-one":
            stages.append(Stage(folder.name, (name,), (*common, f"eval.classes=[{name}]"), True))
            continue
        extra: tuple[str, ...] = ()
        if k > 0:
            extra = (f"train.init_from={run_dir / 'stages' / stages[-1].name / 'export'}",)
        if k > 0 and s.mode == "continual":
            extra += (f"data.replay_classes=[{','.join(order[:k])}]", f"data.replay_fraction={s.replay_fraction}")
        stages.append(Stage(folder.name, (name,), (*common, *extra), False))
    return stages


def run_strategy(job: Job, cfg: Config, processes: int, port: int | None, env: Mapping[str, str],
                 log: Path | None = None) -> dict[str, Any]:
    """Run (or resume) every stage of ``cfg.strategy.mode`` for ``job``; returns the strategy's metrics."""
    final = job.run_dir / "eval" / "metrics.json"
    if final.is_file():
        return json.loads(final.read_text())
    if cfg.model.class_conditioned:
        raise ConfigError(f"model.class_conditioned conditions one joint model on every class of its training; "
                          f"strategy.mode={cfg.strategy.mode} trains on one class at a time: leave one of them off")
    stages = stage_plan(cfg, strategy_classes(cfg, open_builds(list(job.builds))), job.run_dir)
    record = {"mode": cfg.strategy.mode, "order": [c for st in stages for c in st.classes],
              "stage_epochs": cfg.strategy.stage_epochs or cfg.train.epochs,
              "replay_fraction": cfg.strategy.replay_fraction if cfg.strategy.mode == "continual" else 0.0,
              "stages": [{"name": st.name, "classes": list(st.classes), "overrides": list(st.overrides)}
                         for st in stages]}
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(job.run_dir / "strategy.json", json.dumps(record, indent=1))
    results = []
    for st in stages:
        stage_job = replace(job, run_dir=job.run_dir / "stages" / st.name, overrides=(*job.overrides, *st.overrides))
        train_job(stage_job, processes, port, env, log)
        if st.scored:
            results.append(evaluate_job(stage_job, processes, port, env, log))
    if cfg.strategy.mode == "one-for-one":
        metrics = combine(results)
    else:  # the last stage's model, scored on every class
        last = replace(job, run_dir=job.run_dir / "stages" / stages[-1].name)
        metrics = dict(evaluate_job(last, processes, port, env, log))
    metrics["strategy"] = record
    final.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(final, json.dumps(metrics, indent=1))
    return metrics


def combine(results: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One table from one model per class: each class's scores from its own model, averaged as for one model.

    No single image threshold exists for C models, so none is given; ``complete`` holds when every class
    model's evaluation was complete.
    """
    per_group: dict[str, Any] = {}
    for result in results:
        for group, scores in result["per_group"].items():
            if group in per_group:
                raise ValueError(f"class {group} was scored by two class models")
            per_group[group] = scores
    return {**summarize(per_group), "threshold": None, "complete": all(r.get("complete", True) for r in results)}


def train_strategy(cfg: Config, config: str | Path, overrides: list[str], processes: int) -> dict[str, Any]:
    """``launch/train.py`` with a staged ``strategy.mode``: launch each stage on ``processes`` ranks and score it.

    It must run as one plain process: the stages are launched from here (each its own ``accelerate launch``).
    """
    if world_from_env()[1] > 1:
        raise ConfigError(f"strategy.mode={cfg.strategy.mode} launches one training per stage itself: run "
                          "`python launch/train.py --config ... --processes N`, not under a multi-process launcher")
    job = Job(Path(cfg.run.dir), Path(config), tuple(overrides), tuple(Path(b) for b in cfg.data.shards))
    return run_strategy(job, cfg, processes, None, job_env(processes))


def add_classes(export: Path, builds: list[Path], classes: list[str], out: Path, replay_fraction: float,
                overrides: list[str], processes: int) -> dict[str, Any]:
    """A new product on the line: train ``classes`` into the model of ``export``, replaying the classes it was
    trained on, then score every class; returns the evaluation's metrics.

    The new run starts from the export's weights and config (``train.init_from``), keeps its class ids and
    appends the new classes; ``replay_fraction`` of every batch comes from the old classes' training samples
    in ``builds``, so those builds must hold them. Its threshold is only what the new evaluation stores.
    """
    info = read_info(export)
    old = list(info.get("trained_classes") or info.get("class_index") or [])
    if not old:
        raise ConfigError(f"{export}/info.json names no trained classes: not an export of this trainer")
    again = sorted(set(old) & set(classes))
    if again:
        raise ConfigError(f"{again} are classes {export} was already trained on")
    if export_config(export).model.class_conditioned:
        raise ConfigError(f"{export} is conditioned on its {len(info.get('class_index') or {})} classes (a "
                          "modulation per class): new classes need a new joint training, not added ones")
    # eval.classes=[]: the export's config may hold the old evaluation's selection; the new model is scored on all
    steps = [f"train.init_from={export}", f"data.classes=[{','.join(classes)}]",
             f"data.replay_classes=[{','.join(old)}]", f"data.replay_fraction={replay_fraction}", "eval.classes=[]",
             *overrides]
    job = Job(out, export / "config.yaml", tuple(steps), tuple(builds))
    return run_job(job, processes, None, job_env(processes))
