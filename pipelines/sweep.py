"""Ablation sweeps: train and evaluate each row of a paper table, then write its Markdown table.

A sweep file (``configs/sweeps/table<N>.yaml``) is the single source of truth of a table's rows:

    table: 5
    title: Local CL scales, window and projector
    rows:
      - {group: Scales, name: "{f3}", overrides: ["loss.local_scales=[2]"]}
      - {group: Pseudo classes, name: K = 15, pseudo_k: 15}   # Table 3: pseudo classes

Each row is trained with ``launch/train.py --config CFG <row overrides> <extra> run.dir=<sweep>/<row>``
and evaluated with ``launch/evaluate.py --checkpoint <row>/export --shards ... --out <row>/eval``.
Rows whose resolved config equals an earlier row's (the default setting recurs in Table 5) reuse that
row's run. Rows with ``eval/metrics.json`` already present are skipped, so a stopped sweep resumes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ccl.metrics.report import percent
from pipelines.config import Config, ConfigError, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]
SWEEPS_DIR = REPO / "configs" / "sweeps"
METRICS = (("I-AUROC", "I-AUROC"), ("P-AUROC", "P-AUROC"), ("PRO", "AUPRO"))  # (column, metrics key)
ROW_KEYS = {"name", "group", "overrides", "pseudo_k"}


@dataclass(frozen=True)
class Row:
    name: str
    group: str = ""
    overrides: tuple[str, ...] = ()
    pseudo_k: int = 0  # > 0: train on K-means pseudo classes (Table 3)

    @property
    def slug(self) -> str:
        """Directory name of the row's run: group and name, lower case, ``-`` between words."""
        text = f"{self.group} {self.name}".lower()
        return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "row"

    @property
    def pseudo_file(self) -> str:
        return f"pseudo_classes_k{self.pseudo_k}.json" if self.pseudo_k else ""

    def all_overrides(self) -> list[str]:
        """The row's overrides, with the pseudo-class settings spelled out."""
        pseudo = ["data.class_source=pseudo", f"data.pseudo_file={self.pseudo_file}"] if self.pseudo_k else []
        return list(self.overrides) + pseudo


@dataclass(frozen=True)
class Sweep:
    table: int
    title: str
    rows: tuple[Row, ...]


def sweep_path(table: int | str) -> Path:
    """``5`` -> ``configs/sweeps/table5.yaml``; a path is returned as is."""
    text = str(table)
    return Path(text) if text.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"table{text}.yaml"


def load_sweep(table: int | str) -> Sweep:
    """Read and check a sweep file (unknown row keys and duplicate row directories are errors)."""
    path = sweep_path(table)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (tables: 3, 5, 6, 7)")
    tree = yaml.safe_load(path.read_text()) or {}
    if set(tree) != {"table", "title", "rows"}:
        raise ConfigError(f"{path}: a sweep has exactly the keys table, title, rows; got {sorted(tree)}")
    rows = []
    for i, item in enumerate(tree["rows"]):
        unknown = set(item) - ROW_KEYS
        if unknown or "name" not in item:
            raise ConfigError(f"{path}: row {i} needs a name and allows only {sorted(ROW_KEYS)}; got {sorted(item)}")
        rows.append(Row(str(item["name"]), str(item.get("group", "")), tuple(item.get("overrides") or ()),
                        int(item.get("pseudo_k", 0))))
    slugs = [r.slug for r in rows]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"{path}: two rows share a directory name: {slugs}")
    return Sweep(int(tree["table"]), str(tree["title"]), tuple(rows))


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """What running one row means: its directory, or the earlier row whose run it reuses, and commands."""

    row: Row
    dir: Path
    reuse: str = ""  # slug of an earlier row with the same resolved config
    prepare: tuple[tuple[str, ...], ...] = ()  # commands whose outputs must exist first (pseudo classes)
    train: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()  # prepare[i] is skipped when outputs[i] exists

    @property
    def metrics_file(self) -> Path:
        return self.dir / "eval" / "metrics.json"


def plan_sweep(sweep: Sweep, config: str | Path, extra: Sequence[str] = (), out_dir: str | Path | None = None,
               launcher: str = "accelerate launch") -> list[Plan]:
    """Resolve every row's config (so a bad row fails before any training) and its commands."""
    base = load_config(config, list(extra))
    root = Path(out_dir) if out_dir else Path(base.run.dir) / f"table{sweep.table}"
    seen: dict[str, str] = {}  # resolved config -> slug of the first row with it
    plans = []
    for row in sweep.rows:
        cfg = load_config(config, row.all_overrides() + list(extra))
        identity = json.dumps({k: v for k, v in to_dict(cfg).items() if k != "run"}, sort_keys=True)
        if identity in seen:
            plans.append(Plan(row, root / seen[identity], reuse=seen[identity]))
            continue
        seen[identity] = row.slug
        plans.append(_row_plan(row, cfg, str(config), list(extra), root / row.slug, shlex.split(launcher),
                               sweep.table))
    return plans


def _row_plan(row: Row, cfg: Config, config: str, extra: list[str], row_dir: Path, launcher: list[str],
              table: int) -> Plan:
    name = f"{cfg.run.name or Path(config).stem}-table{table}-{row.slug}"
    train = [*launcher, _script("launch/train.py"), "--config", config, *row.all_overrides(), *extra,
             f"run.dir={row_dir}", f"run.name={name}"]
    shards = [arg for s in cfg.data.shards for arg in ("--shards", s)]
    evaluate = [*launcher, _script("launch/evaluate.py"), "--checkpoint", str(row_dir / "export"), *shards,
                "--out", str(row_dir / "eval"), *[e for e in extra if e.startswith("eval.")]]
    prepare, outputs = [], []
    if row.pseudo_k:
        prepare.append(_pseudo_command(row, cfg))
        outputs.append(Path(cfg.data.shards[0]) / row.pseudo_file)
    return Plan(row, row_dir, "", tuple(map(tuple, prepare)), tuple(train), tuple(evaluate), tuple(outputs))


def _pseudo_command(row: Row, cfg: Config) -> list[str]:
    """Pseudo classes from the experiment's own teacher, beside every build of the experiment."""
    return [sys.executable, _script("shard_tools/pseudo_classes.py"), "--shards", *cfg.data.shards,
            "--k", str(row.pseudo_k), "--teacher", cfg.model.teacher, "--pretrained", cfg.model.pretrained,
            "--image-size", str(cfg.data.image_size), "--seed", str(cfg.run.seed), "--out", row.pseudo_file]


def _script(relative: str) -> str:
    """A repository script, relative to the working directory when that is inside the repository."""
    path = REPO / relative
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# ---------------------------------------------------------------- running


def run_sweep(sweep: Sweep, plans: Sequence[Plan], dry_run: bool = False, force: bool = False,
              experiment: str = "") -> str:
    """Run (or, dry, print) every row's commands in order, then write and return ``table<N>.md``."""
    failed: set[str] = set()
    for plan in plans:
        if plan.reuse:
            print(f"# {plan.row.slug}: same config as {plan.reuse}, reusing its result", flush=True)
            continue
        if plan.metrics_file.is_file() and not force and not dry_run:
            print(f"# {plan.row.slug}: {plan.metrics_file} exists, skipping (--force reruns)", flush=True)
            continue
        steps = [c for c, out in zip(plan.prepare, plan.outputs) if dry_run or not out.is_file()]
        for cmd in [*steps, plan.train, plan.evaluate]:
            print(shlex.join(cmd), flush=True)
            if not dry_run and subprocess.run(list(cmd)).returncode != 0:
                print(f"# {plan.row.slug}: command failed; continuing with the next row", flush=True)
                failed.add(plan.row.slug)
                break
    if dry_run:
        return ""
    results = {p.row.slug: read_mean_metrics(p.metrics_file) for p in plans}  # a reusing row reads its source
    table = render_table(sweep, results, experiment)
    out = plans[0].dir.parent / f"table{sweep.table}.md" if plans else Path(f"table{sweep.table}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table, flush=True)
    print(f"wrote {out}" + (f"; failed rows: {sorted(failed)}" if failed else ""), flush=True)
    return table


def read_mean_metrics(path: str | Path) -> dict[str, Any] | None:
    """``result["mean"]`` of an evaluator's metrics.json, or None when the row has no result."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["mean"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        print(f"# {path}: unreadable metrics ({err!r}); row left empty", flush=True)
        return None


# ---------------------------------------------------------------- the table


def render_table(sweep: Sweep, results: Mapping[str, Mapping[str, Any] | None], experiment: str = "") -> str:
    """The paper's layout: one line per row, I-AUROC / P-AUROC / PRO in percent with one decimal.

    ``results`` maps a row's slug to its ``mean`` metrics (fractions in [0, 1]) or None (no result: ``-``).
    Rows that share a run show the same numbers; a group name is printed on its first row only.
    """
    grouped = any(r.group for r in sweep.rows)
    head = (["Ablation"] if grouped else []) + ["Setting"] + [c for c, _ in METRICS]
    align = (["---"] if grouped else []) + ["---"] + ["---:"] * len(METRICS)
    where = f" ({experiment})" if experiment else ""
    lines = [f"**Table {sweep.table}.** {sweep.title}{where}", "", _line(head), _line(align)]
    previous = None
    for row in sweep.rows:
        mean = results.get(row.slug) or {}
        cells = [percent(mean.get(key)) for _, key in METRICS]
        group = [row.group if row.group != previous else ""] if grouped else []
        previous = row.group
        lines.append(_line(group + [row.name] + cells))
    return "\n".join(lines) + "\n"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


