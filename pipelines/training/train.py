"""Training RD + CCL from shards on DDP or DeepSpeed; this file reads like a table of contents.

    train(cfg, resume)          checks inputs, builds the Accelerator, runs ``fit``, exits cleanly (errors:
                                no collective, the entry point leaves at once: pipelines.base.distributed)
      setup                     model (+ synced BN), Adam, prepare, resume, tracker, fixed vis images
      fit                       epochs: train_epoch -> validate -> early stopping / exports / checkpoint
        train_epoch             the loop: planned class-aware batches -> train_step -> logs
          train_step            forward, one all-reduce of {non-finite, SIGTERM, corrupt}, backward, step
                                (a non-finite loss skips its whole accumulation window)
        validate                mean KD loss on the val shards (every sample once) + global features
        show                    heatmaps of fixed images, V-measure and t-SNE of the global features
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.base.checks import check_run_dir
from pipelines.base.collectives import gather_objects, sum_over_ranks
from pipelines.base.config import Config, save_config
from pipelines.base.distributed import (
    configure_deepspeed,
    convert_sync_batchnorm,
    is_deepspeed,
    make_accelerator,
    shutdown,
    world_from_env,
)
from pipelines.base.exits import InputError
from pipelines.base.model import build_model, load_weights, read_info
from pipelines.base.tracking import Tracker
from pipelines.data.exact_reader import exact_loader, first_samples
from pipelines.data.labels import Labels
from pipelines.data.train_classes import TrainData
from pipelines.data.train_data import epoch_steps, train_loader
from pipelines.training.checkpoint import (
    TrainState,
    claim_run_dir,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_export,
)
from pipelines.training.early_stop import judge
from pipelines.training.inputs import check_inputs
from pipelines.training.monitor import (
    LOSS_TERMS,
    Meter,
    class_separation,
    heatmaps,
    log_train,
    progress,
    tsne_image,
    write_debug,
)
from pipelines.training.optim import lr_factor, make_optimizer, set_lr
from pipelines.training.run import Run
from pipelines.training.sigterm import StopRequest
from shard_format.errors import ShardError

log = logging.getLogger("train")


def train(cfg: Config, resume: str = "", overwrite: bool = False,
          evaluator: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The whole run; returns a summary (best_val, step, epoch, export, interrupted, stopped_early).
    ``evaluator``: the test-set evaluation that train.eval_every runs (``evaluate_model``'s signature).

    Rank 0 holds run.dir's lock for the whole run (pipelines.training.checkpoint.claim_run_dir): a second launch into
    the same run.dir stops at its rank 0, before any process group exists, and the launcher ends its other
    ranks. ``overwrite``: a fresh start may set an existing run aside.
    """
    rank, world = world_from_env()
    with contextlib.ExitStack() as claim:
        if rank == 0:
            check_run_dir(cfg.run.dir)  # an unwritable run.dir is named as such, not as a lock that failed
            claim.enter_context(claim_run_dir(cfg.run.dir, resume, overwrite))
        return _train(cfg, resume, world, evaluator)


def _train(cfg: Config, resume: str, world: int, evaluator: Callable[..., Any] | None) -> dict[str, Any]:
    data, labels = check_inputs(cfg, world)  # before any process group does work
    accelerator = make_accelerator(cfg)
    run = setup(cfg, accelerator, data, labels, resume)
    run.evaluator = evaluator
    try:
        result = fit(run)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            run.tracker.finish(exit_code=1)  # local only: the log is closed, the W&B run marked failed
        raise  # no collective on the way out: a peer may be blocked in one (DESIGN section 7)
    run.tracker.finish()
    del run
    shutdown(accelerator)  # every rank got here
    return result


def setup(cfg: Config, accelerator: Any, data: TrainData, labels: Labels, resume: str) -> Run:
    from accelerate.utils import set_seed

    set_seed(cfg.run.seed, deterministic=cfg.run.deterministic)
    shard_set = data.all
    model = build_model(cfg, class_index=labels.class_index)  # the classes a conditioned student knows
    if cfg.train.init_from:
        start_from_export(model, cfg.train.init_from)
    if cfg.train.sync_bn and accelerator.num_processes > 1:
        model = convert_sync_batchnorm(model)
    if cfg.train.compile:
        model.compile_student(cfg.train.compile_backend, cfg.train.compile_mode)
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before prepare; groups keep their order
    configure_deepspeed(accelerator, cfg, cfg.data.batch_size // accelerator.num_processes)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    ckpt = find_checkpoint(resume, cfg.run.dir)
    if ckpt is not None:
        state = load_checkpoint(accelerator, ckpt, cfg.run.deterministic)
        log.info("resumed from %s at epoch %d step %d", ckpt, state.epoch, state.step)
    if accelerator.is_main_process:
        save_config(cfg, Path(cfg.run.dir) / "config.yaml")
    steps = epoch_steps(cfg, data.current)
    total = cfg.train.epochs * steps // cfg.train.grad_accum
    total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    dtype = half if (half is not None and is_deepspeed(accelerator)) else torch.float32  # DeepSpeed casts the model
    run = Run(cfg, accelerator, model, optimizer, base_lrs, shard_set, data, labels,
              Tracker(cfg, cfg.run.dir, accelerator.is_main_process), state, steps, total, dtype,
              StopRequest(cfg.train.sigterm_grace))
    if accelerator.is_main_process and cfg.tracking.vis_every > 0 and cfg.tracking.vis_images > 0:
        split = "val" if shard_set.count("val") else "train"
        run.vis = first_samples(shard_set, split, cfg.tracking.vis_images, cfg.data.image_size)
    return run


def fit(run: Run) -> dict[str, Any]:
    cfg, s = run.cfg, run.state
    stopped_early = s.stopped_early  # a finished run continues when train.epochs was raised
    while s.epoch < cfg.train.epochs and not stopped_early:
        outcome = train_epoch(run)
        if outcome == "interrupted":
            save_checkpoint(run.accelerator, run.run_dir, s, run.model, run.optimizer)
            return summary(run, interrupted=True)
        last = outcome == "max_steps" or s.epoch + 1 == cfg.train.epochs
        if outcome == "done":
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if s.epoch % max(1, cfg.train.val_every) == 0 or last:
            stopped_early = early_stopping(run, validate(run))
        if cfg.tracking.vis_every > 0 and (s.epoch % cfg.tracking.vis_every == 0 or last):
            show(run)
        maybe_evaluate(run)
        s.stopped_early = stopped_early
        if s.epoch % max(1, cfg.train.ckpt_every) == 0 or stopped_early or last:
            save_checkpoint(run.accelerator, run.run_dir, s, run.model, run.optimizer)
        if outcome == "max_steps":
            break
    finish_exports(run)
    return summary(run, stopped_early=stopped_early)


def train_epoch(run: Run) -> str:
    """One epoch (or what is left of it); returns done | interrupted | max_steps."""
    cfg, s, acc = run.cfg, run.state, run.accelerator
    loader = train_loader(cfg, run.train_data.current, run.labels, acc.process_index, acc.num_processes, s.epoch,
                          s.batch_in_epoch, pin_memory=torch.cuda.is_available(), replay=run.train_data.replay)
    run.model.train()
    run.corrupt = 0.0
    meter = Meter()
    bar = progress(run)
    for batch in meter.wait(loader):
        flags = train_step(run, batch)
        s.batch_in_epoch += 1
        meter.add(flags, batch, cfg.data.batch_size)
        if acc.sync_gradients and flags is not None:
            s.samples += cfg.data.batch_size * cfg.train.grad_accum
        if s.batch_in_epoch % cfg.train.log_every == 0 or s.batch_in_epoch == run.steps_per_epoch:
            log_train(run, meter.flush(), bar)
        if run.stop.requested:
            return "interrupted"
        if cfg.train.max_steps and s.step >= cfg.train.max_steps:
            return "max_steps"
    return "done"


def train_step(run: Run, batch: dict[str, Any]) -> dict[str, float] | None:
    """Forward, agree with the other ranks, backward, and at the end of an accumulation window step.

    None when the micro-batch belongs to a skipped window: a non-finite loss on any rank skips its
    whole window (train.grad_accum micro-batches) on every rank, so windows keep their boundaries
    and no partial window's gradients reach the optimizer.
    """
    cfg, acc, s = run.cfg, run.accelerator, run.state
    set_lr(run.optimizer, run.base_lrs, lr_factor(s.step, run.total_steps, cfg.train))
    labels = batch["label"].to(acc.device)
    if run.window_buffers is None:  # a window's first micro-batch: a skipped window restores these
        run.window_buffers = [b.detach().clone() for b in acc.unwrap_model(run.model).buffers()]
    with acc.accumulate(run.model):
        out = run.model(run.to_input(batch["image"]), run.to_input(batch["augmented"]), labels,
                        rank=acc.process_index, world_size=acc.num_processes,
                        contrastive_weight=contrastive_weight(s.step, cfg.loss.contrastive_warmup))
        unreadable = batch["stats"]["corrupt"] + batch["stats"]["lost"]  # samples, also a truncated shard's
        bad, stop, corrupt = sum_over_ranks(acc, [float(not torch.isfinite(out["loss"]).item()),
                                                  float(run.stop.requested), float(unreadable)])
        run.stop.requested = stop > 0
        run.corrupt += corrupt
        if run.corrupt > cfg.data.max_corrupt:
            raise ShardError(f"{int(run.corrupt)} unreadable or lost samples this epoch "
                             f"(data.max_corrupt={cfg.data.max_corrupt}); the last checkpoint is kept")
        skipped = run.window_bad = run.window_bad or bad > 0
        if not skipped or is_deepspeed(acc):
            # DeepSpeed keeps the window's gradients in its own buffers, which only its step may clear: a
            # skipped window's non-finite gradients go in too, and its step drops the whole window.
            acc.backward(out["loss"])
        if acc.sync_gradients:
            saved, run.window_buffers = run.window_buffers, None
            if skipped:
                restore_buffers(run, saved)
                skip_window(run, out)
            else:
                if cfg.train.grad_clip > 0 and not is_deepspeed(acc):  # DeepSpeed clips itself (its JSON)
                    acc.clip_grad_norm_(run.model.parameters(), cfg.train.grad_clip)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                s.step += 1
                run.nan_streak = 0
    if skipped:
        return None
    if cfg.train.debug_checksums and acc.sync_gradients:
        write_debug(run, out, batch["keys"])
    return {k: float(out[k].detach()) for k in LOSS_TERMS}


def contrastive_weight(step: int, warmup: int) -> float:
    """Linear ramp of lambda1 and lambda2 from 0 over the first ``warmup`` optimizer steps (1 without warm-up)."""
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


@torch.no_grad()
def restore_buffers(run: Run, saved: list[torch.Tensor] | None) -> None:
    """A skipped window leaves no trace: its forwards updated the BatchNorm running statistics (with
    non-finite values when its loss was), so they go back to what they were before it."""
    for buffer, before in zip(run.accelerator.unwrap_model(run.model).buffers(), saved or []):
        buffer.copy_(before)


def skip_window(run: Run, out: dict[str, Any]) -> None:
    """End of a window with a non-finite loss: no update on any rank; abort after train.nan_tolerance in a row."""
    acc = run.accelerator
    if is_deepspeed(acc) and not acc.optimizer_step_was_skipped:
        raise FloatingPointError("DeepSpeed applied an update from non-finite gradients (is its overflow check "
                                 f"off?); stopping, the last good checkpoint is kept in {run.run_dir / 'checkpoints'}")
    run.optimizer.zero_grad(set_to_none=True)  # DDP: the window's gradients (DeepSpeed cleared its own)
    run.window_bad = False
    run.nan_streak += 1
    log.warning("non-finite loss (kd=%s) at step %d: its accumulation window is skipped (%d in a row)",
                float(out["kd"].detach()), run.state.step, run.nan_streak)
    if run.nan_streak >= run.cfg.train.nan_tolerance:
        raise FloatingPointError(f"{run.nan_streak} non-finite losses in a row (train.nan_tolerance): aborting; "
                                 f"the last good checkpoint is kept in {run.run_dir / 'checkpoints'}")


@torch.no_grad()
def validate(run: Run) -> dict[str, Any]:
    """Mean KD loss over every val sample (unwrapped model: ranks may hold different batch counts)."""
    acc = run.accelerator
    split = "val" if run.shard_set.count("val") else "train"
    module = acc.unwrap_model(run.model)
    module.eval()
    total, count, feats, labels = 0.0, 0, [], []
    cfg = run.cfg
    loader = exact_loader(run.shard_set, split, cfg.data.image_size, cfg.eval.batch_size, cfg.data.num_workers,
                          acc.process_index, acc.num_processes)
    for batch in loader:
        for message in batch.errors:
            log.warning("skipping sample: %s", message)
        if batch.images is None:
            continue
        out = module(run.to_input(batch.images), labels=batch.classes.to(acc.device))  # a conditioned student's
        n = batch.size
        total, count = total + float(out["kd"]) * n, count + n
        if sum(len(f) for f in feats) < cfg.tracking.max_features:
            feats.append(out["global_features"].float().cpu().numpy())
            labels.append(batch.classes.numpy())
    module.train()
    total, count = sum_over_ranks(acc, [total, count])
    loss = total / max(count, 1)
    run.tracker.log({"val/loss": loss, "val/samples": count, "epoch": run.state.epoch}, run.state.step)
    return {"loss": loss, "split": split, "features": feats, "labels": labels}


def early_stopping(run: Run, val: dict[str, Any]) -> bool:
    """Export the best weights; True when the run should stop (pipelines.training.early_stop)."""
    run.last_val = val
    best, stop = judge(run.state, val["loss"], run.cfg.train)
    if best:
        if run.accelerator.is_main_process:
            write_export(run.accelerator.unwrap_model(run.model), run.cfg, run.run_dir, "export",
                         export_info(run, "best"))
        run.accelerator.wait_for_everyone()
    return stop


def show(run: Run) -> None:
    """Heatmaps of the fixed images, class separation and t-SNE of the last validation's features."""
    val = run.last_val
    if val is None:
        return
    acc = run.accelerator
    feats = gather_objects(acc, np.concatenate(val["features"]) if val["features"] else np.zeros((0, 1), np.float32))
    labels = gather_objects(acc, np.concatenate(val["labels"]) if val["labels"] else np.zeros(0, np.int64))
    if not run.accelerator.is_main_process:
        return
    step, names = run.state.step, list(run.shard_set.class_names)
    images, keys, classes = run.vis
    if images is not None:
        module = run.accelerator.unwrap_model(run.model)
        run.tracker.log_images("val/heatmaps", heatmaps(module, images, keys, classes, run.to_input), step)
    f = np.concatenate([x for x in feats if len(x)]) if any(len(x) for x in feats) else None
    y = np.concatenate(labels)
    if f is not None and len(np.unique(y)) > 1:
        run.tracker.log({"val/v_measure": class_separation(f, y, run.cfg.run.seed)}, step)
        if run.cfg.tracking.tsne and len(f) > 5:
            image = tsne_image(f, y, names, f"global features, epoch {run.state.epoch}", run.cfg.run.seed)
            run.tracker.log_images("val/tsne", [(image, f"epoch {run.state.epoch}")], step)


def maybe_evaluate(run: Run) -> None:
    """Test-set evaluation every train.eval_every epochs, with the evaluator the entry point gave."""
    every = run.cfg.train.eval_every
    if every <= 0 or run.state.epoch % every:
        return
    if run.evaluator is None:
        log.warning("train.eval_every is set but this run was given no evaluator: no test-set evaluation")
        return
    module = run.accelerator.unwrap_model(run.model)
    out = run.run_dir / "eval" / f"epoch{run.state.epoch:04d}"
    run.evaluator(module, run.shard_set, run.cfg, run.accelerator, out, tracker=run.tracker, step=run.state.step)
    module.train()


def finish_exports(run: Run) -> None:
    """export_last always; export (= best) falls back to the last weights if no validation ran."""
    if run.accelerator.is_main_process:
        module = run.accelerator.unwrap_model(run.model)
        write_export(module, run.cfg, run.run_dir, "export_last", export_info(run, "last"))
        if not (run.run_dir / "export" / "model.safetensors").is_file():
            write_export(module, run.cfg, run.run_dir, "export", export_info(run, "last"))
    run.accelerator.wait_for_everyone()


def export_info(run: Run, which: str) -> dict[str, Any]:
    return {"class_index": dict(run.shard_set.class_index), "datasets": run.shard_set.datasets(),
            "builds": list(run.shard_set.builds), "step": run.state.step, "epoch": run.state.epoch,
            "val_loss": run.state.best_val if math.isfinite(run.state.best_val) else None, "weights": which,
            "class_source": run.cfg.data.class_source, "trained_classes": trained_classes(run),
            "init_from": run.cfg.train.init_from or None}


def trained_classes(run: Run) -> list[str]:
    """Every class whose samples this run trained on (the current and the replayed ones), plus, for a run
    started from an export, the classes that export had been trained on."""
    names = {n for ss in (run.train_data.current, run.train_data.replay) if ss is not None
             for m in ss.manifests for n in (f"{m['dataset']}/{c}" for c in m.get("counts", {}).get("train", {}))}
    if run.cfg.train.init_from:
        names |= set(read_info(run.cfg.train.init_from).get("trained_classes") or [])
    return sorted(names)


def start_from_export(model: Any, export: str) -> None:
    """The student's weights from an export (keys, shapes and dtypes the model's), before anything is prepared."""
    path = Path(export) / "model.safetensors"
    try:
        load_weights(model, path)  # one InputError naming the file and the first tensor that does not fit
    except InputError as err:
        raise InputError(f"train.init_from={export}: {err} (teacher, projector and scales must be the export's)") \
            from None
    log.info("student weights from %s", path)


def summary(run: Run, interrupted: bool = False, stopped_early: bool = False) -> dict[str, Any]:
    s = run.state
    return {"best_val": s.best_val, "step": s.step, "epoch": s.epoch, "export": str(run.run_dir / "export"),
            "interrupted": interrupted, "stopped_early": stopped_early}
