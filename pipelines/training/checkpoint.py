"""Resumable checkpoints (every rank) and best/last exports (main process), written atomically.

    RUN/checkpoints/last/   accelerator.save_state (model, optimizer, per-rank RNG; DeepSpeed's
                            collective checkpoint) + train_state.json (epoch, step, early stopping)
    RUN/export/             the best weights by validation loss (pipelines.base.model.save_export)
    RUN/export_last/        the weights at the end of training

A checkpoint is written to ``.tmp-<name>`` and renamed over the old one once every rank finished,
so a crash mid-save leaves the previous checkpoint intact.

One launch per run dir (``claim_run_dir``): its rank 0 holds ``RUN/.run.lock`` for the whole run, and a
fresh training never writes over an existing run (checkpoint or export) unless told to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.base.exits import InputError
from shard_format.atomic import set_aside as move_aside
from shard_format.lock import LockHeld, hold_lock

STATE_NAME = "train_state.json"
RUN_LOCK = ".run.lock"
# What a run dir may hold before its run starts: the class subsets check_inputs builds, the lock, runs set aside.
NOT_A_RUN = ("data", RUN_LOCK)
WRITE_TEST = ".write-test-"  # pipelines.base.checks.check_run_dir's probe, made by every rank meanwhile
log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # loader batches of ``epoch`` already trained (resume mid-epoch)
    best_val: float = float("inf")
    bad_validations: int = 0  # validations since the smoothed loss last reached a new low
    smooth_val: float = float("inf")  # the smoothed validation loss (train.val_smoothing)
    best_smooth: float = float("inf")
    samples: int = 0  # training samples seen
    stopped_early: bool = False  # patience exhausted: --resume does not train further


def checkpoint_dir(run_dir: str | Path, name: str = "last") -> Path:
    return Path(run_dir) / "checkpoints" / name


def save_checkpoint(accelerator: Any, run_dir: str | Path, state: TrainState, model: Any, optimizer: Any,
                    name: str = "last") -> Path:
    """Collective: every rank calls it. Returns the final directory.

    A model or optimizer state holding NaN or inf on any rank is never saved: FloatingPointError on every
    rank, the last good checkpoint kept (it must stay resumable after a divergence).
    """
    from pipelines.base.collectives import sum_over_ranks

    final = checkpoint_dir(run_dir, name)
    problem = non_finite(accelerator.unwrap_model(model), optimizer)
    if sum_over_ranks(accelerator, [float(bool(problem))])[0]:  # ZeRO shards optimizer state: ranks may differ
        kept = f"the last good checkpoint {final} is kept" if final.is_dir() else "no checkpoint is written"
        raise FloatingPointError(f"{problem or 'the state of another rank'} holds NaN or inf (the training "
                                 f"diverged: lower the learning rate); {kept}")
    tmp = final.with_name(f".tmp-{name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps(asdict(state), indent=1))
    except (OSError, RuntimeError) as err:  # a full disk: torch says only "PytorchStreamWriter failed writing"
        shutil.rmtree(tmp, ignore_errors=True)  # no half checkpoint left beside the kept one
        raise OSError(getattr(err, "errno", None) or errno.EIO,
                      f"the checkpoint could not be written ({str(err).splitlines()[0] if str(err) else type(err)}; "
                      f"{free_space(final.parent)} free there); the last checkpoint is kept in {final}",
                      str(tmp)) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def free_space(folder: Path) -> str:
    """Free space of the file system holding ``folder``, for a message ("unknown" when it cannot be read)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown"


def non_finite(model: Any, optimizer: Any = None) -> str:
    """The first floating-point parameter, buffer or optimizer-state tensor holding NaN or inf ('' if none)."""
    import torch

    named = [*((f"parameter {n}", t) for n, t in model.named_parameters()),
             *((f"buffer {n}", t) for n, t in model.named_buffers()),
             *((f"optimizer state tensor {i}", t) for i, t in enumerate(optimizer_tensors(optimizer)))]
    return next((what for what, t in named if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())),
                "")


def optimizer_tensors(optimizer: Any) -> Iterator[Any]:
    """Every tensor of an optimizer's state, through the wrappers (Accelerate's, DeepSpeed's) around it."""
    import torch

    seen: set[int] = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        state = getattr(optimizer, "state", None)
        if isinstance(state, dict):
            for entry in state.values():
                values = entry.values() if isinstance(entry, dict) else [entry]
                yield from (v for v in values if isinstance(v, torch.Tensor))
        optimizer = getattr(optimizer, "optimizer", None)


def load_checkpoint(accelerator: Any, path: str | Path, deterministic: bool = False) -> TrainState:
    """Restore model, optimizer and RNG of every rank; returns the loop state.

    A damaged checkpoint is an InputError naming the file; a missing or unreadable random state of
    this rank is a warning (an error with ``run.deterministic``), never silent.
    """
    from pipelines.base.model import check_safetensors

    path = Path(path)
    state = read_state(path / STATE_NAME)
    for weights in sorted(path.rglob("*.safetensors")):
        check_safetensors(weights)
    check_random_state(path, accelerator.process_index, deterministic)
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # accelerate / DeepSpeed / torch.load name neither the file nor the cause well
        raise InputError(f"{path}: the checkpoint does not load ({type(err).__name__}: {err}); "
                         "resume from an intact copy or start a new run") from None
    return state


def read_state(path: Path) -> TrainState:
    try:
        return TrainState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: not a training state written by this trainer ({err})") from None


def check_random_state(checkpoint: Path, rank: int, deterministic: bool) -> None:
    """Warn (or, with ``run.deterministic``, fail) when this rank's random state cannot be restored.

    accelerate's load_state only logs "Could not load random states" at info level and goes on.
    """
    from accelerate.utils import RNG_STATE_NAME, load

    path = checkpoint / f"{RNG_STATE_NAME}_{rank}.pkl"
    problem = ""
    if not path.is_file():
        problem = "is missing"
    else:
        try:
            load(path)  # the way load_state reads it
        except Exception as err:  # truncated or not a pickle of random states
            problem = f"cannot be read ({type(err).__name__}: {err})"
    if not problem:
        return
    message = (f"{path} {problem}: rank {rank} resumes with a fresh random state, so augmentations differ from "
               "an uninterrupted run")
    if deterministic:
        raise InputError(message + " (run.deterministic=true makes this an error)")
    log.warning(message)


def find_checkpoint(resume: str, run_dir: str | Path) -> Path | None:
    """``--resume RUN_DIR`` (or a checkpoint dir) -> its checkpoint; ``auto`` -> run.dir's if there is one."""
    if not resume:
        return None
    if resume == "auto":
        last = checkpoint_dir(run_dir)
        return last if (last / STATE_NAME).is_file() else None
    given = Path(resume)
    for candidate in (checkpoint_dir(given), given):
        if (candidate / STATE_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"--resume {resume}: no checkpoint there (expected {checkpoint_dir(given)}/{STATE_NAME})")


def check_replaceable(out: Path, source: Path, marker: str, tool: str) -> None:
    """``out`` may be replaced by a tool's output: new, empty, or an earlier output of ``tool`` (its info.json
    holds ``marker``); never ``source`` itself, a file, or another run's files."""
    from pipelines.base.model import read_info

    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the checkpoint itself; choose another directory")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; choose a directory")
    if out.exists() and any(out.iterdir()) and marker not in read_info(out):
        raise InputError(f"--out {out} exists and is not {tool}; refusing to replace it "
                         f"(choose an empty or new directory)")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished directory into place; the old one is removed only after the rename."""
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def write_export(model: Any, cfg: Any, run_dir: str | Path, name: str, info: dict[str, Any]) -> Path:
    """Main process: an export directory (weights, config, info) swapped in atomically."""
    from pipelines.base.model import save_export

    final = Path(run_dir) / name
    problem = non_finite(model)
    if problem:
        raise FloatingPointError(f"{problem} holds NaN or inf (the training diverged: lower the learning rate); "
                                 f"{final} is not written" + (" (the earlier one is kept)" if final.is_dir() else ""))
    tmp = final.with_name(f".tmp-{name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_export(model, cfg, tmp, info)
    replace_dir(tmp, final)
    return final


@contextmanager
def claim_run_dir(run_dir: str | Path, resume: str, overwrite: bool) -> Iterator[None]:
    """Hold ``RUN/.run.lock`` (one launch per run dir; called by its rank 0 only, before any process group)
    and make sure a fresh start destroys no run: InputError naming the holder or the run found.

    A fresh start (no checkpoint to continue) over a run dir holding a checkpoint or an export is refused
    unless ``overwrite``; whatever an earlier run left there (with ``overwrite``, under ``--resume auto``
    without a checkpoint, or a run that died before its first checkpoint) is moved into
    ``RUN/previous-<time>/``, so outputs of two runs never mix and nothing is deleted.
    """
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_lock(run_dir / RUN_LOCK))
        except LockHeld as held:
            raise InputError(f"run.dir={run_dir} is in use by another training ({held.holder}); wait for it "
                             "or stop it (then --resume auto continues it), or choose another run.dir") from None
        if not continues(resume, run_dir):
            found = [p.name for p in (checkpoint_dir(run_dir) / STATE_NAME, run_dir / "export" / "model.safetensors",
                                      run_dir / "export_last" / "model.safetensors") if p.is_file()]
            if found and not overwrite and resume != "auto":
                raise InputError(f"run.dir={run_dir} holds a run ({', '.join(leftovers(run_dir))}): continue it "
                                 "with --resume auto, start over with --overwrite (it is moved into "
                                 f"{run_dir}/previous-<time>/), or choose another run.dir")
            set_aside(run_dir)
        yield


def continues(resume: str, run_dir: Path) -> bool:
    """Whether this start continues the run in ``run_dir`` (rather than starting one there)."""
    ckpt = find_checkpoint(resume, run_dir)
    return ckpt is not None and ckpt.resolve().parent.parent == run_dir.resolve()


def leftovers(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that an earlier run wrote."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in NOT_A_RUN and not p.name.startswith(("previous-", WRITE_TEST)))


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier run's outputs into ``RUN/previous-<time>/`` (None when there were none)."""
    names = leftovers(run_dir)
    target = move_aside(run_dir, keep=NOT_A_RUN, keep_prefixes=(WRITE_TEST,))
    if target is not None:
        log.warning("%s: the outputs of an earlier run (%s) were moved into %s", run_dir, ", ".join(names), target)
    return target
