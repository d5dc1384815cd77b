"""``Run``: everything the training loop touches, in one place (the loop and the monitor both take it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ccl.data.transforms import normalize_batch
from pipelines.base.config import Config
from pipelines.base.tracking import Tracker
from pipelines.data.labels import Labels
from pipelines.data.train_classes import TrainData
from pipelines.training.checkpoint import TrainState
from pipelines.training.sigterm import StopRequest
from shard_format.builds import ShardSet


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: Config
    accelerator: Any
    model: Any
    optimizer: Any
    base_lrs: list[float]
    shard_set: ShardSet  # every class the run trains or replays: validation, exports
    train_data: TrainData  # the current classes' builds (each epoch) and the replayed ones
    labels: Labels
    tracker: Tracker
    state: TrainState
    steps_per_epoch: int  # loader batches per epoch, equal on every rank
    total_steps: int  # optimizer steps of the whole run (for the schedule)
    input_dtype: torch.dtype
    stop: StopRequest
    vis: tuple[Any, list[str], Any] = (None, [], None)  # images, keys, classes
    nan_streak: int = 0  # skipped accumulation windows in a row
    window_bad: bool = False  # the current accumulation window had a non-finite loss: it is skipped
    window_buffers: list[torch.Tensor] | None = None  # the buffers (BatchNorm statistics) before the window
    corrupt: float = 0.0
    last_val: dict[str, Any] | None = None
    # train.eval_every's test-set evaluation (pipelines.evaluation.evaluate.evaluate_model, given by the entry
    # point: evaluation is a later stage than training and the trainer does not import it)
    evaluator: Callable[..., Any] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_batch(images.to(self.accelerator.device, non_blocking=True), self.input_dtype)
