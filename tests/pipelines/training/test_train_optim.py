"""Optimizer groups, lr scaling and schedules; checkpoint discovery."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipelines.base.config import load_config
from pipelines.training.checkpoint import find_checkpoint
from pipelines.training.optim import lr_factor, make_optimizer, scaled_lrs, set_lr


class TwoGroups(torch.nn.Module):
    def __init__(self, projector: bool = True) -> None:
        super().__init__()
        self.p = torch.nn.Linear(2, 2) if projector else None
        self.r = torch.nn.Linear(2, 2)

    def param_groups(self, lr_p: float, lr_r: float) -> list[dict]:
        groups = [{"name": "projector", "params": list(self.p.parameters()) if self.p else [], "lr": lr_p},
                  {"name": "rest", "params": list(self.r.parameters()), "lr": lr_r}]
        return [g for g in groups if g["params"]]


def test_lrs_scale_with_the_global_batch_and_groups_keep_their_lr() -> None:
    cfg = load_config(None, ["data.batch_size=64"])
    assert scaled_lrs(cfg) == pytest.approx((0.004, 0.02))
    opt = make_optimizer(TwoGroups(), cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.004, 0.02]) and opt.defaults["betas"] == (0.5, 0.999)
    only_rest = make_optimizer(TwoGroups(projector=False), cfg)  # projector "none": one group, the rest's lr
    assert [g["lr"] for g in only_rest.param_groups] == pytest.approx([0.02])
    set_lr(opt, [0.004, 0.02], 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002, 0.01])


def test_schedules() -> None:
    cosine = load_config(None, ["train.schedule=cosine", "train.warmup_steps=10"]).train
    assert lr_factor(0, 110, cosine) == pytest.approx(0.1) and lr_factor(9, 110, cosine) == 1.0
    assert lr_factor(60, 110, cosine) == pytest.approx(0.5) and lr_factor(110, 110, cosine) == pytest.approx(0.0)
    constant = load_config(None, []).train
    assert all(lr_factor(s, 100, constant) == 1.0 for s in (0, 50, 99))
    assert math.isclose(lr_factor(35, 110, cosine), 0.5 * (1 + math.cos(math.pi * 25 / 100)))


def test_find_checkpoint(tmp_path: Path) -> None:
    assert find_checkpoint("", tmp_path) is None and find_checkpoint("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint(str(tmp_path), tmp_path)
    last = tmp_path / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "train_state.json").write_text("{}")
    assert find_checkpoint("auto", tmp_path) == last == find_checkpoint(str(tmp_path), "elsewhere")
