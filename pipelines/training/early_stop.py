"""The early-stopping rule, one pure function: the best weights by raw validation loss, stopping by a smoothed one.

One validation of a few images per class is noisy: a single lucky or unlucky value must neither end a run nor
pick the model a comparison scores. So the best export follows the raw loss (the weights that did best), while
patience counts validations without a new low of the exponentially smoothed loss, and no run stops before
``train.min_epochs``. With ``val_smoothing=0`` and ``min_epochs=0`` this is plain patience on the raw loss.
"""

from __future__ import annotations

import math

from pipelines.base.config import TrainConfig
from pipelines.training.checkpoint import TrainState


def judge(state: TrainState, loss: float, t: TrainConfig) -> tuple[bool, bool]:
    """Record validation ``loss`` (taken after ``state.epoch`` finished epochs) in ``state``; (new best, stop)."""
    best = loss < state.best_val
    if best:
        state.best_val = loss
    a = t.val_smoothing
    state.smooth_val = loss if not math.isfinite(state.smooth_val) else a * state.smooth_val + (1 - a) * loss
    if state.smooth_val < state.best_smooth:
        state.best_smooth, state.bad_validations = state.smooth_val, 0
    else:
        state.bad_validations += 1
    stop = t.patience > 0 and state.bad_validations >= t.patience and state.epoch >= t.min_epochs
    return best, stop
