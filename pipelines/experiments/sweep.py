"""Sweeps: train and evaluate each row of a paper table, then write its Markdown table.

A sweep file (``configs/sweeps/table<N>.yaml`` for paper table N, ``configs/sweeps/<name>.yaml`` for a
named sweep such as ``cocoad``) is the single source of truth of a table's rows:

    table: 5                          # or a name: cocoad
    title: Local CL scales, window and projector
    config: all_in_all_30.yaml        # the experiment the rows modify (relative to configs/); --config overrides
    overrides: [loss.lambda_global=0] # optional: applied to every row, before the row's own
    classes: 30                       # optional: the class count the rows assume (a warning if the builds differ)
    layout: rows                      # optional: rows (a line per row) | columns (a column per row, metrics as lines)
    summary: mean                     # optional: a Mean line (rows) or column (columns) over all rows
    metrics: [I-AUROC, P-AUROC, PRO]  # optional: the reported metrics (this is the default)
    rows:
      - {group: Scales, name: "{f3}", overrides: ["loss.local_scales=[2]"]}
      - {group: Pseudo classes, name: K = 15, pseudo_k: 15}   # Table 3: pseudo classes
      - {name: Split 1, overrides: [...], build_args: {cocoad_split: 1}}   # each build's manifest must agree

Each row is trained with ``launch/train.py --config CFG <sweep and row overrides> <extra> run.dir=<sweep>/<row>``
and evaluated with ``launch/evaluate.py --checkpoint <row>/export --shards ... --out <row>/eval``.
Rows whose resolved config equals an earlier row's (the default setting recurs in Table 5) reuse that
row's run. Rows with ``eval/metrics.json`` already present are skipped, so a stopped sweep resumes.
A dry run prints each row's resolved settings (where they differ from the experiment config) and its
commands. Rows for the readings the paper leaves open (``loss.local_negatives``, ``loss.reduction``, the
augmentation preset; issue 9) belong in their own named sweep, ``configs/sweeps/readings.yaml``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ccl.metrics.report import percent
from pipelines.base.config import Config, ConfigError, load_config, parse_override, to_dict
from shard_format.builds import open_builds
from shard_format.errors import ShardError
from shard_format.manifest import read_manifest
from shard_format.schema import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
SWEEPS_DIR = REPO / "configs" / "sweeps"
METRIC_KEYS = {"I-AUROC": "I-AUROC", "I-AP": "I-AP", "I-F1max": "I-F1max", "P-AUROC": "P-AUROC",
               "P-AP": "P-AP", "P-F1max": "P-F1max", "PRO": "AUPRO"}  # column -> key in metrics.json
DEFAULT_METRICS = ("I-AUROC", "P-AUROC", "PRO")  # the paper's ablation tables
ROW_KEYS = {"name", "group", "overrides", "pseudo_k", "build_args"}
SWEEP_KEYS = {"table", "title", "rows", "config", "overrides", "classes", "layout", "summary", "metrics"}
LAYOUTS = ("rows", "columns")


@dataclass(frozen=True)
class Row:
    name: str
    group: str = ""
    overrides: tuple[str, ...] = ()  # the sweep's common overrides, then the row's own
    pseudo_k: int = 0  # > 0: train on K-means pseudo classes (Table 3)
    build_args: tuple[tuple[str, Any], ...] = ()  # manifest["args"] every build of the row must have

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
    table: int | str  # a paper table's number, or a name (cocoad)
    title: str
    rows: tuple[Row, ...]
    config: str = ""  # default experiment config, relative to configs/
    classes: int = 0  # the class count the rows were written for (0: any)
    layout: str = "rows"
    summary: str = ""  # "" | "mean"
    metrics: tuple[str, ...] = DEFAULT_METRICS

    @property
    def tag(self) -> str:
        """``table5`` or ``cocoad``: the sweep's directory and Markdown file name."""
        return f"table{self.table}" if isinstance(self.table, int) else self.table

    @property
    def default_config(self) -> Path | None:
        return Path(_script(f"configs/{self.config}")) if self.config else None


def sweep_path(table: int | str) -> Path:
    """``5`` -> ``configs/sweeps/table5.yaml``; ``cocoad`` -> ``configs/sweeps/cocoad.yaml``; a path as is."""
    text = str(table)
    if text.endswith((".yaml", ".yml")):
        return Path(text)
    return SWEEPS_DIR / (f"table{text}.yaml" if text.isdigit() else f"{text}.yaml")


def load_sweep(table: int | str) -> Sweep:
    """Read and check a sweep file (unknown keys and duplicate row directories are errors)."""
    path = sweep_path(table)
    if not path.is_file():
        known = ", ".join(sorted(p.stem.removeprefix("table") for p in SWEEPS_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep file {path} does not exist (sweeps: {known})")
    tree = yaml.safe_load(path.read_text()) or {}
    if not {"table", "title", "rows"} <= set(tree) <= SWEEP_KEYS:
        raise ConfigError(f"{path}: a sweep has the keys table, title, rows (optional: "
                          f"{', '.join(sorted(SWEEP_KEYS - {'table', 'title', 'rows'}))}); got {sorted(tree)}")
    common = tuple(tree.get("overrides") or ())
    rows = [_row(path, i, item, common) for i, item in enumerate(tree["rows"])]
    slugs = [r.slug for r in rows]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"{path}: two rows share a directory name: {slugs}")
    table = tree["table"]
    table = int(table) if isinstance(table, int) or str(table).isdigit() else str(table)
    sweep = Sweep(table, str(tree["title"]), tuple(rows), str(tree.get("config") or ""), int(tree.get("classes", 0)),
                  str(tree.get("layout", "rows")), str(tree.get("summary") or ""),
                  tuple(tree.get("metrics") or DEFAULT_METRICS))
    bad = [m for m in sweep.metrics if m not in METRIC_KEYS]
    if sweep.layout not in LAYOUTS or sweep.summary not in ("", "mean") or bad:
        raise ConfigError(f"{path}: layout must be one of {list(LAYOUTS)}, summary '' or mean, metrics of "
                          f"{list(METRIC_KEYS)}; got layout {sweep.layout!r}, summary {sweep.summary!r}, "
                          f"unknown metrics {bad}")
    return sweep


def _row(path: Path, i: int, item: Mapping[str, Any], common: tuple[str, ...]) -> Row:
    unknown = set(item) - ROW_KEYS
    if unknown or "name" not in item:
        raise ConfigError(f"{path}: row {i} needs a name and allows only {sorted(ROW_KEYS)}; got {sorted(item)}")
    build_args = tuple(sorted((item.get("build_args") or {}).items()))
    return Row(str(item["name"]), str(item.get("group", "")), common + tuple(item.get("overrides") or ()),
               int(item.get("pseudo_k", 0)), build_args)


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """What running one row means: its directory, or the earlier row whose run it reuses, and commands."""

    row: Row
    dir: Path
    config: Config  # the row's resolved config
    settings: tuple[str, ...] = ()  # "key=value" where the resolved config differs from the experiment's
    reuse: str = ""  # slug of an earlier row with the same resolved config
    prepare: tuple[tuple[str, ...], ...] = ()  # commands whose outputs must exist first (pseudo classes)
    train: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()  # prepare[i] is skipped when outputs[i] exists

    @property
    def metrics_file(self) -> Path:
        return self.dir / "eval" / "metrics.json"


def plan_sweep(sweep: Sweep, config: str | Path | None = None, extra: Sequence[str] = (),
               out_dir: str | Path | None = None, launcher: str = "accelerate launch") -> list[Plan]:
    """Resolve every row's config (so a bad row fails before any training) and its commands.

    ``config`` None: the sweep's own ``config`` (configs/all_in_all_30.yaml for the paper's ablations).
    """
    config = config if config is not None else sweep.default_config
    if config is None:
        raise ConfigError(f"sweep {sweep.tag} names no experiment config: give --config")
    base = load_config(config, list(extra))
    _warn_on_class_count(sweep, base, config)
    root = Path(out_dir) if out_dir else Path(base.run.dir) / sweep.tag
    seen: dict[str, str] = {}  # resolved config -> slug of the first row with it
    plans = []
    for row in sweep.rows:
        cfg = load_config(config, row.all_overrides() + list(extra))
        _check_build_args(row, cfg)
        settings = tuple(config_diff(base, cfg, [parse_override(o)[0] for o in row.all_overrides()]))
        identity = json.dumps({k: v for k, v in to_dict(cfg).items() if k != "run"}, sort_keys=True)
        if identity in seen:
            plans.append(Plan(row, root / seen[identity], cfg, settings, reuse=seen[identity]))
            continue
        seen[identity] = row.slug
        plans.append(_row_plan(row, cfg, settings, str(config), list(extra), root / row.slug, shlex.split(launcher),
                               sweep.tag))
    return plans


def config_diff(base: Config, cfg: Config, keys: Sequence[str] = ()) -> list[str]:
    """``key=value`` (dotted, resolved values) for ``keys`` (the row's overrides, even where they equal the
    experiment's value), then wherever else ``cfg`` differs from ``base``; run.* left out."""
    def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(to_dict(base)), flat(to_dict(cfg))
    shown = [k for k in dict.fromkeys(keys) if k in new] + [k for k in new if old.get(k) != new[k] and k not in keys]
    return [f"{k}={json.dumps(new[k])}" for k in shown if not k.startswith("run.")]


def _warn_on_class_count(sweep: Sweep, base: Config, config: str | Path) -> None:
    """Rows written for C classes (Table 3's K = C/2, C, 2C) on builds with another count: say so."""
    if not sweep.classes or not all((Path(b) / MANIFEST_NAME).is_file() for b in base.data.shards):
        return  # nothing to compare before the builds exist (a dry run on a fresh machine)
    n = open_builds(list(base.data.shards)).num_classes
    if n != sweep.classes:
        print(f"warning: the rows of {sweep.tag} are written for {sweep.classes} classes (the paper's setting); "
              f"the builds of {config} hold {n}", file=sys.stderr, flush=True)


def _check_build_args(row: Row, cfg: Config) -> None:
    """Each existing build of the row must have been built with ``row.build_args`` (e.g. its COCO-AD split)."""
    for build in cfg.data.shards if row.build_args else ():
        if not (Path(build) / MANIFEST_NAME).is_file():
            continue  # not built yet: the dry run still prints the plan, training reports the missing build
        args = read_manifest(build).get("args", {})
        for key, want in row.build_args:
            if args.get(key) != want:
                raise ConfigError(f"{build}: built with {key}={args.get(key)!r}, but row {row.name!r} needs "
                                  f"{key}={want!r} (rebuild it, or point the row's data.shards elsewhere)")


def _row_plan(row: Row, cfg: Config, settings: tuple[str, ...], config: str, extra: list[str], row_dir: Path,
              launcher: list[str], tag: str) -> Plan:
    name = f"{cfg.run.name or Path(config).stem}-{tag}-{row.slug}"
    train = [*launcher, _script("launch/train.py"), "--config", config, *row.all_overrides(), *extra,
             f"run.dir={row_dir}", f"run.name={name}", "--resume", "auto"]
    shards = [arg for s in cfg.data.shards for arg in ("--shards", s)]
    evaluate = [*launcher, _script("launch/evaluate.py"), "--checkpoint", str(row_dir / "export"), *shards,
                "--out", str(row_dir / "eval"), *[e for e in extra if e.startswith("eval.")]]
    prepare, outputs = [], []
    if row.pseudo_k:
        prepare.append(_pseudo_command(row, cfg))
        outputs.append(Path(cfg.data.shards[0]) / row.pseudo_file)
    return Plan(row, row_dir, cfg, settings, "", tuple(map(tuple, prepare)), tuple(train), tuple(evaluate),
                tuple(outputs))


def _pseudo_command(row: Row, cfg: Config) -> list[str]:
    """Pseudo classes with the paper's encoder (ImageNet ResNet-18, final stage, pooled), beside every build."""
    from shard_tools.pseudo_classes import DEFAULT_ENCODER, LAST_LEVEL

    return [sys.executable, _script("shard_tools/pseudo_classes.py"), "--shards", *cfg.data.shards,
            "--k", str(row.pseudo_k), "--teacher", DEFAULT_ENCODER, "--level", str(LAST_LEVEL), "--pretrained", "hub",
            "--image-size", str(cfg.data.image_size), "--seed", str(cfg.run.seed), "--out", row.pseudo_file]


def _script(relative: str) -> str:
    """A repository script, relative to the working directory when that is inside the repository."""
    path = REPO / relative
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# ---------------------------------------------------------------- running


def run_sweep(sweep: Sweep, plans: Sequence[Plan], dry_run: bool = False, force: bool = False,
              experiment: str = "") -> str:
    """Run (or, dry, print) every row's commands in order, then write and return ``<tag>.md``."""
    failed: set[str] = set()
    for plan in plans:
        print(f"# {plan.row.slug}: {' '.join(plan.settings) or '(the experiment config as is)'}", flush=True)
        if plan.reuse:
            print(f"# {plan.row.slug}: same config as {plan.reuse}, reusing its result", flush=True)
            continue
        if plan.metrics_file.is_file() and not force and not dry_run:
            print(f"# {plan.row.slug}: {plan.metrics_file} exists, skipping (--force reruns)", flush=True)
            continue
        steps = [c for c, out in zip(plan.prepare, plan.outputs) if dry_run or not out.is_file()]
        # --force trains the row afresh (its earlier run set aside by --overwrite); otherwise a killed row resumes
        train = [*plan.train[:-2], "--overwrite"] if force else plan.train
        for cmd in [*steps, train, plan.evaluate]:
            print(shlex.join(cmd), flush=True)
            if not dry_run and subprocess.run(list(cmd)).returncode != 0:
                print(f"# {plan.row.slug}: command failed; continuing with the next row", flush=True)
                failed.add(plan.row.slug)
                break
    if dry_run:
        return ""
    results = {p.row.slug: read_mean_metrics(p.metrics_file) for p in plans}  # a reusing row reads its source
    classes = {p.row.slug: training_classes(p.config.data.shards) for p in plans}
    table = render_table(sweep, results, experiment, classes)
    out = plans[0].dir.parent / f"{sweep.tag}.md" if plans else Path(f"{sweep.tag}.md")
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


def training_classes(builds: Sequence[str]) -> int | None:
    """Classes with training samples (train or val) in ``builds``' manifests; None if one is unreadable.

    Not the class index: a COCO-AD build also lists the classes that only test images carry."""
    names: set[str] = set()
    for build in builds:
        try:
            manifest = read_manifest(build)
        except ShardError:
            return None
        counts = manifest.get("counts", {})
        for split in ("train", "val"):
            names |= {f"{manifest['dataset']}/{c}" for c, n in counts.get(split, {}).items()
                      if n["normal"] + n["anomalous"]}
    return len(names)


# ---------------------------------------------------------------- the table


def render_table(sweep: Sweep, results: Mapping[str, Mapping[str, Any] | None], experiment: str = "",
                 classes: Mapping[str, int | None] | None = None) -> str:
    """The paper's layout: I-AUROC / P-AUROC / PRO (or ``sweep.metrics``) in percent with one decimal.

    ``results`` maps a row's slug to its ``mean`` metrics (fractions in [0, 1]) or None (no result: ``-``).
    Layout ``rows``: one line per row; rows that share a run show the same numbers; a group name is
    printed on its first row only. Layout ``columns``: one column per row and a line per metric, plus
    the number of training classes of each row's builds (``classes``). ``summary: mean`` adds the mean
    over all rows, shown only where every row has a value.
    """
    where = f" ({experiment})" if experiment else ""
    head = [f"**Table {sweep.table}.** {sweep.title}{where}" if isinstance(sweep.table, int)
            else f"**{sweep.title}**{where}", ""]
    columns = [(c, METRIC_KEYS[c]) for c in sweep.metrics]
    values = {r.slug: [(results.get(r.slug) or {}).get(key) for _, key in columns] for r in sweep.rows}
    mean = [_strict_mean([values[r.slug][i] for r in sweep.rows]) for i in range(len(columns))]
    if sweep.layout == "columns":
        return "\n".join(head + _columns_body(sweep, columns, values, mean, classes or {})) + "\n"
    grouped = any(r.group for r in sweep.rows)
    lines = [_line((["Ablation"] if grouped else []) + ["Setting"] + [c for c, _ in columns]),
             _line((["---"] if grouped else []) + ["---"] + ["---:"] * len(columns))]
    previous = None
    for row in sweep.rows:
        group = [row.group if row.group != previous else ""] if grouped else []
        previous = row.group
        lines.append(_line(group + [row.name] + [percent(v) for v in values[row.slug]]))
    if sweep.summary == "mean":
        lines.append(_line(([""] if grouped else []) + ["Mean"] + [percent(v) for v in mean]))
    return "\n".join(head + lines) + "\n"


def _columns_body(sweep: Sweep, columns: list[tuple[str, str]], values: Mapping[str, list], mean: list,
                  classes: Mapping[str, int | None]) -> list[str]:
    summary = ["Mean"] if sweep.summary == "mean" else []
    lines = [_line(["Metric"] + [r.name for r in sweep.rows] + summary),
             _line(["---"] + ["---:"] * (len(sweep.rows) + len(summary)))]
    for i, (column, _) in enumerate(columns):
        cells = [percent(values[r.slug][i]) for r in sweep.rows] + ([percent(mean[i])] if summary else [])
        lines.append(_line([column] + cells))
    counts = [classes.get(r.slug) for r in sweep.rows]
    lines.append(_line(["train classes"] + ["-" if n is None else str(n) for n in counts] + [""] * len(summary)))
    return lines


def _strict_mean(values: list[float | None]) -> float | None:
    """The mean when every value is present (a mean over fewer splits is not the published mean)."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
