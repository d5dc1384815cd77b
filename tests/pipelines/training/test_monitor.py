"""monitor.log_train on two ranks: data counts are summed, losses averaged, in one all-reduce."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from pipelines.data.train_data import BATCH_COUNTS
from pipelines.training.monitor import log_train


class TwoRanks:
    """Rank 0's view of a 2-process sum all-reduce; rank 1 contributes ``peer`` (one reduce allowed)."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, peer: list[float]) -> None:
        self.peer, self.calls = peer, 0

    def reduce(self, t: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum" and t.dtype == torch.float64
        self.calls += 1
        return t + torch.tensor(self.peer, dtype=torch.float64)


def test_counts_are_summed_and_losses_averaged_over_ranks() -> None:
    local = {"train/loss": 0.3, "train/kd": 0.1, "perf/samples_per_s": 12.0, "perf/data_wait": 0.25,
             **{f"data/{k}": 0.0 for k in BATCH_COUNTS}, "data/corrupt": 1.0, "data/lost": 3.0}
    peer = dict(local, **{"train/loss": 0.4, "train/kd": 0.2, "perf/data_wait": 0.75, "data/corrupt": 2.0,
                          "data/lost": 4.0})
    logged: list[tuple[dict[str, Any], int]] = []
    acc = TwoRanks([peer[k] for k in sorted(peer)])
    run = SimpleNamespace(accelerator=acc, optimizer=SimpleNamespace(param_groups=[{"name": "rest", "lr": 1e-3}]),
                          state=SimpleNamespace(epoch=2, batch_in_epoch=5, step=25), steps_per_epoch=10,
                          tracker=SimpleNamespace(log=lambda scalars, step: logged.append((scalars, step))))
    log_train(run, local, bar=None)
    (scalars, step), = logged
    assert acc.calls == 1 and step == 25
    assert scalars["data/corrupt"] == 3.0 and scalars["data/lost"] == 7.0 and scalars["data/padded"] == 0.0
    assert abs(scalars["train/loss"] - 0.35) < 1e-12 and abs(scalars["train/kd"] - 0.15) < 1e-12
    assert scalars["perf/data_wait"] == 0.5 and scalars["perf/samples_per_s"] == 12.0  # global rate: rank 0's
    assert scalars["lr/rest"] == 1e-3 and scalars["epoch"] == 2.5
