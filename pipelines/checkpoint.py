"""Resumable checkpoints (every rank) and best/last exports (main process), written atomically.

    RUN/checkpoints/last/   accelerator.save_state (model, optimizer, per-rank RNG; DeepSpeed's
                            collective checkpoint) + train_state.json (epoch, step, early stopping)
    RUN/export/             the best weights by validation loss (pipelines.model.save_export)
    RUN/export_last/        the weights at the end of training

A checkpoint is written to ``.tmp-<name>`` and renamed over the old one once every rank finished,
so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.exits import InputError

STATE_NAME = "train_state.json"
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


def save_checkpoint(accelerator: Any, run_dir: str | Path, state: TrainState, name: str = "last") -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    final = checkpoint_dir(run_dir, name)
    tmp = final.with_name(f".tmp-{name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_NAME).write_text(json.dumps(asdict(state), indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | Path, deterministic: bool = False) -> TrainState:
    """Restore model, optimizer and RNG of every rank; returns the loop state.

    A damaged checkpoint is an InputError naming the file; a missing or unreadable random state of
    this rank is a warning (an error with ``run.deterministic``), never silent.
    """
    from pipelines.model import check_safetensors

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
    from pipelines.model import save_export

    final = Path(run_dir) / name
    tmp = final.with_name(f".tmp-{name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_export(model, cfg, tmp, info)
    replace_dir(tmp, final)
    return final
