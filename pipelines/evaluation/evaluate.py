"""Streaming evaluation of an export (or of a model during training), and of any method's saved maps.

    result = evaluate_model(model, shard_set, cfg, accelerator, out_dir, tracker, step)

Each rank scores its own part of the test shards (``pipelines.data.eval_data``: every sample once),
updates an ``AnomalyMetrics`` state of constant size, and keeps only the ``vis`` highest- and
lowest-scoring samples per group. At the end the ranks merge: group names and histogram grids are
gathered, the histograms summed with one all-reduce, the per-image scores all-gathered (padded to
the longest), and the heatmap candidates selected globally. The main process writes
metrics.json / .csv / .md, image_scores.csv, ROC and PRO curves per dataset and the heatmaps.

The model is used as given, without DDP's wrapper (``accelerator.unwrap_model`` is applied): ranks
score different numbers of batches, and a wrapped forward could synchronise buffers and hang.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ccl.data.transforms import normalize_batch
from ccl.metrics import AnomalyMetrics, merged_grids, to_csv_rows, to_markdown
from ccl.metrics.report import METRICS, dataset_of, table_rows
from pipelines.base import visualize
from pipelines.base.checks import check_model
from pipelines.base.collectives import all_gather_rows, gather_objects, sum_tensor
from pipelines.base.config import Config, ConfigError, load_config
from pipelines.base.distributed import make_accelerator, shutdown
from pipelines.base.exits import InputError
from pipelines.base.model import WEIGHTS_NAME, build_model, export_config, model_of_export, read_info, write_info
from pipelines.base.tracking import Tracker
from pipelines.data.eval_data import class_test_count, eval_loader
from pipelines.data.exact_reader import ExactBatch
from pipelines.data.train_classes import open_shards
from pipelines.evaluation.extremes import Extremes, Payload, render_extremes
from pipelines.evaluation.html_report import write_report
from pipelines.evaluation.map_files import iter_map_files, list_map_files
from shard_format.atomic import check_writable, set_aside, write_atomic
from shard_format.builds import ShardSet, shard_file_problems
from shard_format.errors import ShardError
from shard_format.schema import class_key_form, safe_name
from shard_format.writer import file_sha256

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- merging the ranks


def sync_metrics(metrics: AnomalyMetrics, acc: Any) -> None:
    """Make every rank's ``metrics`` the merge of all ranks' states (groups and grids agreed first)."""
    grids = gather_objects(acc, metrics.grids())
    names = sorted({n for g in grids for n in g})
    metrics.align(names, {n: merged_grids([g[n] for g in grids if n in g], metrics.bins) for n in names})
    metrics.load_state_tensors({k: sum_tensor(acc, v) for k, v in metrics.state_tensors().items()})
    metrics.set_image_arrays(*all_gather_rows(acc, np.stack(metrics.image_arrays()).astype(np.float64)))


# ---------------------------------------------------------------- scoring


def _payload(batch: ExactBatch, maps: torch.Tensor, i: int) -> Payload:
    return lambda: (batch.images[i].permute(1, 2, 0).numpy(), maps[i].cpu().numpy().astype(np.float16),
                    batch.masks[i].numpy() if bool(batch.has_mask[i]) else None)


# (B, 3, S, S) uint8 images and (B,) class ids of the scored builds' class index -> (B, S, S) maps, (B,) scores
Scorer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def torch_scorer(net: torch.nn.Module, device: torch.device, shard_set: ShardSet | None = None) -> Scorer:
    """A model's forward as a scorer: uint8 batches normalised on ``device``, float32 maps and scores on the CPU.
    A class-conditioned net scores each image under its class, found by name (``shard_set``: the scored builds)."""
    dtype = next(net.parameters()).dtype
    to_model = condition_lookup(net, shard_set)

    def score(images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = None if to_model is None else model_classes(to_model, classes, shard_set).to(device)
        # contiguous NCHW, the layout the evaluator has always fed the model
        out = net(normalize_batch(images.to(device), dtype).contiguous(), labels=labels)
        return out["anomaly_map"].float().cpu(), out["score"].float().cpu()

    return score


def condition_lookup(net: torch.nn.Module, shard_set: ShardSet | None) -> torch.Tensor | None:
    """For a class-conditioned net, (C,) its class id of every class of ``shard_set`` (-1: not one of its
    classes); None for a net that scores every image alike."""
    condition = getattr(net, "condition", None)
    if condition is None:
        return None
    if shard_set is None:
        raise ValueError("a class-conditioned model is scored with the class index of the builds it scores")
    own = {name: i for i, name in enumerate(condition.class_names)}
    return torch.tensor([own.get(name, -1) for name in shard_set.class_names], dtype=torch.long)


def model_classes(lookup: torch.Tensor, classes: torch.Tensor, shard_set: ShardSet) -> torch.Tensor:
    """The model's class ids (B,) of a batch's class ids (B,) in ``shard_set``'s index; InputError for an image
    of a class the model was not conditioned on (it has no normal set for it)."""
    known = classes >= 0
    mapped = torch.where(known, lookup[classes.clamp(min=0)], -1)
    if bool((mapped < 0).any()):
        names = sorted({shard_set.class_names[int(c)] if c >= 0 else "(no class)" for c in classes[mapped < 0]})
        raise InputError(f"{names}: not among the classes this class-conditioned model was trained on "
                         "(eval.classes=[...] scores only some)")
    return mapped


def score_shards(score: Scorer, loader: Iterable[ExactBatch], metrics: AnomalyMetrics, extremes: Extremes,
                 progress: tqdm | None) -> tuple[list[str], list[str]]:
    """Score the loader's batches; update metrics and extremes. Returns (scored keys, skipped messages)."""
    keys, skipped = [], []
    for batch in loader:
        for message in batch.errors:
            print(f"warning: skipped {message}", file=sys.stderr, flush=True)
        skipped += batch.errors
        if batch.size:
            maps, scores = score(batch.images, batch.classes)
            masks = [m if h else None for m, h in zip(batch.masks.numpy(), batch.has_mask.tolist(), strict=True)]
            metrics.update(maps, masks, batch.groups, image_scores=scores, image_labels=batch.labels)
            for i, (group, key) in enumerate(zip(batch.groups, batch.keys, strict=True)):
                extremes.offer(group, float(scores[i]), key, _payload(batch, maps, i))
            keys += batch.keys
        if progress is not None:
            progress.update(batch.size + len(batch.errors))
    return keys, skipped


def evaluate_model(model: torch.nn.Module, shards: ShardSet | Sequence[str | Path], cfg: Config,
                   accelerator: Any = None, out_dir: str | Path | None = None, tracker: Any = None,
                   step: int | None = None, vis: int | None = None,
                   score_range: tuple[float, float] | str | None = "auto", prefix: str = "eval") -> dict[str, Any]:
    """Score the test split of ``shards`` with ``model`` on every rank and return the merged metrics (on every
    rank). ``accelerator`` None runs single-process. The main process writes reports to ``out_dir`` (when given)
    and logs to ``tracker``. Call it on all ranks together.
    """
    net = model if accelerator is None else accelerator.unwrap_model(model)
    shard_set = shards if isinstance(shards, ShardSet) else open_shards(cfg, [str(s) for s in shards])
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return evaluate_scorer(torch_scorer(net, next(net.parameters()).device, shard_set), shard_set, cfg,
                                   accelerator, out_dir, tracker, step, vis, score_range, prefix)
    finally:
        net.train(was_training)


def evaluate_scorer(score: Scorer, shards: ShardSet | Sequence[str | Path], cfg: Config, accelerator: Any = None,
                    out_dir: str | Path | None = None, tracker: Any = None, step: int | None = None,
                    vis: int | None = None, score_range: tuple[float, float] | str | None = "auto",
                    prefix: str = "eval") -> dict[str, Any]:
    """``evaluate_model`` for any scorer (a torch model's forward, an exported graph's runtime)."""
    shard_set = shards if isinstance(shards, ShardSet) else open_shards(cfg, [str(s) for s in shards])
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    e = cfg.eval
    classes = resolve_classes(shard_set, e.classes)
    total = class_test_count(shard_set, classes)  # an unknown class fails here, before any scoring
    # the reader filters sample keys, which spell class names with key_part (``metal nut`` -> ``metal_nut``)
    loader = eval_loader(shard_set, cfg.data.image_size, e.batch_size, e.num_workers, rank, world, e.max_images,
                         tuple(class_key_form(c) for c in classes))
    planned = sum(s.samples for s in loader.dataset.segments)  # this rank's part of the plan the loader reads
    metrics = AnomalyMetrics(bins=e.bins, score_range=score_range, fpr_limit=e.fpr_limit)
    extremes = Extremes(e.vis if vis is None else vis)
    progress = tqdm(total=planned, desc="evaluate", unit="img", disable=rank != 0, file=sys.stderr)
    try:
        keys, skipped = score_shards(score, loader, metrics, extremes, progress)
    finally:
        progress.close()
        del loader
    sync_metrics(metrics, accelerator)
    result = metrics.compute()
    all_keys = gather_objects(accelerator, keys)
    # eval.max_images cuts the plan before eval.classes filters it: then the manifests cannot say how many
    expected = total if e.max_images <= 0 else (None if e.classes else min(e.max_images, total))
    result.update(images=sum(map(len, all_keys)), expected=expected,
                  skipped=[m for part in gather_objects(accelerator, skipped) for m in part],
                  shards=list(shard_set.builds), step=step)
    check_complete(result, e.allow_partial, quick_look=e.max_images > 0)  # all ranks hold it: all raise together
    panels = render_extremes(extremes, accelerator, rank) if extremes.n > 0 else []
    if rank == 0:
        if out_dir is not None:
            write_reports(result, metrics, Path(out_dir), all_keys, panels)
        if tracker is not None:
            log_to_tracker(tracker, result, panels, step or 0, prefix)
    return result


def resolve_classes(shard_set: ShardSet, names: Sequence[str]) -> tuple[str, ...]:
    """eval.classes as the builds name them: ``folder/metal nut`` or its key form ``folder/metal_nut``;
    an unknown name stays as given (class_test_count names it)."""
    by_form = {class_key_form(n): n for n in shard_set.class_index}
    out = []
    for name in names:
        try:
            form = class_key_form(name)
        except ValueError:
            form = ""
        out.append(name if name in shard_set.class_index else by_form.get(form, name))
    return tuple(out)


def check_complete(result: dict[str, Any], allow_partial: bool, quick_look: bool = False) -> None:
    """Compare what was scored with what the manifests promise: ``missing`` and ``complete`` in ``result``.

    Missing samples (unreadable, or lost to a missing or truncated shard) fail the evaluation unless
    ``eval.allow_partial``, and their result carries no threshold. A quick look (``eval.max_images``)
    is never complete, so no threshold of it is stored either.
    """
    expected = result["expected"]
    result["missing"] = None if expected is None else expected - result["images"]
    result["complete"] = result["missing"] == 0 and not quick_look
    if not result["missing"]:
        return
    result["threshold"] = None  # an F1-optimal threshold of a subset is not the model's
    detail = "; ".join(result["skipped"][:3]) + (" ..." if len(result["skipped"]) > 3 else "")
    message = f"{result['missing']} of {expected} test samples were not scored ({detail})"
    if not allow_partial:
        raise ShardError(message + ": the metrics would be partial. Repair the shards (shard_tools/verify.py "
                                   "names the damage) or set eval.allow_partial=true to report the rest "
                                   "(no threshold is stored)")
    log.warning("%s: partial metrics (eval.allow_partial=true), no threshold", message)


# ---------------------------------------------------------------- standalone maps


def evaluate_maps(maps_dir: str | Path, masks_dir: str | Path | None, out_dir: str | Path | None,
                  group_depth: int = 1, bins: int = 4096, score_range: tuple[float, float] | str | None = "auto",
                  fpr_limit: float = 0.3) -> dict[str, Any]:
    """Evaluate saved anomaly maps of any method (one file per image), in constant memory."""
    if out_dir is not None:  # before scoring: an unwritable --out fails now, an earlier run's outputs move aside
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        set_aside_outputs(Path(out_dir))
    metrics = AnomalyMetrics(bins=bins, score_range=score_range, fpr_limit=fpr_limit)
    keys = []
    files = iter_map_files(maps_dir, masks_dir, group_depth)  # one map in memory at a time
    for key, group, amap, mask, where in tqdm(files, total=len(list_map_files(maps_dir)), desc="evaluate",
                                              unit="map", file=sys.stderr):
        try:
            metrics.update([amap], [mask], [group])
        except ValueError as err:
            raise InputError(f"{where}: {err}") from None
        keys.append(key)
    if not keys:
        raise FileNotFoundError(f"{maps_dir}: no anomaly maps (.npy or .png) found")
    sync_metrics(metrics, None)  # sorts the groups, as a distributed run would
    result = metrics.compute()
    result.update(images=len(keys), expected=len(keys), skipped=[], shards=[str(maps_dir)], step=None,
                  missing=0, complete=True)
    if out_dir is not None:
        write_reports(result, metrics, Path(out_dir), [keys], [])
    return result


# ---------------------------------------------------------------- outputs


def write_reports(result: dict[str, Any], metrics: AnomalyMetrics, out: Path, keys: list[list[str]],
                  panels: list[tuple[str, str, int, float, str, bytes]]) -> None:
    """metrics.json / .csv / .md, image_scores.csv, curves/<dataset>.png, heatmaps/<group>/*.png, report.html.

    Folder and file names derived from the records (dataset, group, key) go through ``safe_name``: a
    shard's json cannot write outside ``out``. metrics.json is written last and atomically: when it
    exists, the rest is complete.
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(to_csv_rows(result))
    (out / "metrics.md").write_text(to_markdown(result))
    scores, labels, groups = metrics.image_arrays()
    flat_keys = [(k, r) for r, part in enumerate(keys) for k in part]
    with open(out / "image_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "group", "label", "score", "rank"])
        for (key, rank), s, lab, g in zip(flat_keys, scores, labels, groups, strict=True):
            w.writerow([key, metrics.group_names[int(g)], int(lab), f"{s:.6g}", rank])
    by_dataset: dict[str, dict[str, Any]] = {}
    for name in metrics.group_names:
        by_dataset.setdefault(dataset_of(name) or "all", {})[name] = metrics.curves(name)
    for ds, curves in by_dataset.items():
        visualize.plot_curves(curves, ds, out / "curves" / f"{safe_name(ds)}.png", metrics.fpr_limit)
    for group, kind, pos, _score, key, png in panels:
        folder = out.joinpath("heatmaps", *(safe_name(part) for part in group.split("/")))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{kind}{pos:02d}_{safe_name(key.split('/', 2)[-1])}.png").write_bytes(png)
    write_report(out, result, [k for k, _ in flat_keys], labels, scores,
                 [metrics.group_names[int(g)] for g in groups], panels)
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))  # last: its presence means complete


def log_to_tracker(tracker: Any, result: dict[str, Any], panels: list, step: int, prefix: str) -> None:
    """Means as scalars, the per-group table, heatmaps per group."""
    scalars = {f"{prefix}/{m}": v for m, v in result["mean"].items() if v is not None}
    for ds, scores in result["per_dataset"].items():
        scalars.update({f"{prefix}/{ds}/{m}": v for m, v in scores.items() if v is not None})
    tracker.log(scalars, step)
    rows = [[label] + [scores.get(m) for m in METRICS] for label, scores in table_rows(result)]
    tracker.log_table(f"{prefix}/metrics", ["group", *METRICS], rows, step)
    for group in sorted({p[0] for p in panels}):
        images = [(visualize.decode_png(png), f"{kind} {pos}: {key} ({score:.4g})")
                  for g, kind, pos, score, key, png in sorted(panels) if g == group]
        tracker.log_images(f"{prefix}/heatmaps/{group}", images, step)


# ---------------------------------------------------------------- the export entry point


def run_evaluation(checkpoint: str | Path | None, shards: Sequence[str | Path], out_dir: str | Path | None = None,
                   vis: int | None = None, overrides: Sequence[str] = (),
                   score_range: tuple[float, float] | str | None = "auto",
                   config: str | Path | None = None) -> dict[str, Any]:
    """``launch/evaluate.py``: load an export (or, with ``config``, the official RD4AD checkpoint its
    ``model.checkpoint`` names), evaluate on all ranks, store an export's image threshold in info.json.

    Bad input (export or checkpoint, shards, missing shard files, unknown eval.classes) fails before any
    process group exists. On an error no collective runs (the entry point leaves at once); the threshold
    is stored only from a complete set.
    """
    export = Path(checkpoint) if checkpoint is not None else None
    cfg = export_config(export, overrides) if export is not None else _checkpoint_config(config, overrides)
    shard_set = open_test_shards(cfg, shards)  # bad shards fail here, before any process group exists
    out = Path(out_dir) if out_dir is not None else (export.parent if export else Path(cfg.run.dir)) / "eval"
    # The weights the threshold belongs to: hashed before they are read, compared after scoring.
    weights_sha256 = file_sha256(export / WEIGHTS_NAME) if export is not None else None
    # The model on the CPU first: a damaged export or checkpoint fails here too.
    model = model_of_export(export, cfg) if export is not None else build_model(cfg).eval()
    check_writable(out, "--out")  # before hours of scoring, not after
    accelerator = make_accelerator(cfg)
    model = model.to(accelerator.device)
    tracker = None
    try:
        if accelerator.is_main_process:
            set_aside_outputs(out)
        if cfg.tracking.wandb.mode != "disabled":
            tracker = Tracker(cfg, out, accelerator.is_main_process)
        step = read_info(export).get("step") if export else None
        result = evaluate_model(model, shard_set, cfg, accelerator, out, tracker, step, vis, score_range)
        if accelerator.is_main_process and export is not None:
            problem = threshold_problem(export, cfg, result, weights_sha256)
            if problem:
                log.warning("the image threshold is in %s only, not in %s: %s", out / "metrics.json",
                            export / "info.json", problem)
            else:
                save_threshold(export, result, cfg, weights_sha256)
    except BaseException:
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.finish(exit_code=1)
        raise  # no collective on the way out (DESIGN section 7)
    if tracker is not None:
        tracker.finish()
    del model
    shutdown(accelerator)  # every rank got here
    return result


def open_test_shards(cfg: Config, shards: Sequence[str | Path]) -> ShardSet:
    """The builds to score, checked: readable manifests, every ``eval.classes`` entry known, the test shard
    files present (or ``eval.allow_partial``)."""
    shard_set = open_shards(cfg, [str(s) for s in shards])
    class_test_count(shard_set, resolve_classes(shard_set, cfg.eval.classes))
    missing, resized = shard_file_problems(shard_set, ("test",))
    for problem in resized:
        log.warning("%s", problem)
    if missing and not cfg.eval.allow_partial:
        raise ShardError(f"{missing[0]} ({len(missing)} test shard(s) missing; "
                         "eval.allow_partial=true scores the rest)")
    return shard_set


def set_aside_outputs(out: Path) -> None:
    """An output folder holds one evaluation: an earlier one's files (metrics, heatmaps, curves) move into
    ``OUT/previous-<time>/``, so a run that dies leaves no metrics that look like its own."""
    target = set_aside(out)
    if target is not None:
        log.warning("%s: the outputs of an earlier evaluation were moved into %s", out, target)


def _checkpoint_config(config: str | Path | None, overrides: Sequence[str]) -> Config:
    """The config of an official RD4AD checkpoint's evaluation (``configs/rd4ad.yaml model.checkpoint=PATH``)."""
    if config is None:
        raise InputError("give an export (--checkpoint RUN/export) or a config naming an RD4AD checkpoint")
    cfg = load_config(config, list(overrides))
    if not cfg.model.checkpoint:
        raise ConfigError(f"{config}: evaluating a config needs model.checkpoint=PATH (an official RD4AD checkpoint)")
    if not Path(cfg.model.checkpoint).is_file():
        raise FileNotFoundError(f"model.checkpoint={cfg.model.checkpoint}: no such file")
    check_model(cfg)  # an RD4AD checkpoint on other teacher weights is refused before anything is downloaded
    return cfg


def threshold_problem(export: Path, cfg: Config, result: dict[str, Any], weights_sha256: str | None) -> str:
    """Why this evaluation's threshold is not the export's ('' when it is): it must come from exactly the
    export's weights, with its own preprocessing, on every test sample of every class of the given builds."""
    own = export_config(export)
    if not result["complete"] or result.get("threshold") is None:
        return "not every test sample was scored"
    if cfg.eval.classes:
        return f"eval.classes={list(cfg.eval.classes)} scores only some classes"
    if cfg.eval.max_images > 0:
        return f"eval.max_images={cfg.eval.max_images} scores only some images"
    for key, got, want in (("data.image_size", cfg.data.image_size, own.data.image_size),
                           ("eval.sigma", cfg.eval.sigma, own.eval.sigma)):
        if got != want:
            return f"{key}={got} is not the export's preprocessing ({want})"
    if file_sha256(export / WEIGHTS_NAME) != weights_sha256:
        return f"{export / WEIGHTS_NAME} changed during the evaluation (a newer export was swapped in)"
    return ""


def save_threshold(export: str | Path, result: dict[str, Any], cfg: Config, weights_sha256: str) -> None:
    """Record the F1-optimal image threshold in the export's info.json for ``predict.py --threshold auto``,
    with what it was computed on (``threshold_problem`` says when it may be)."""
    info = read_info(export)
    info["image_threshold"] = result["threshold"]
    info["image_threshold_source"] = {"I-F1max": result["pooled"]["I-F1max"], "images": result["images"],
                                      "shards": result["shards"], "classes": sorted(result["per_group"]),
                                      "image_size": cfg.data.image_size, "sigma": cfg.eval.sigma,
                                      "weights_sha256": weights_sha256}
    write_info(export, info)
