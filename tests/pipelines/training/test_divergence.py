"""After a divergence the last good checkpoint really is kept (issue 21, item 6): a skipped window leaves the
BatchNorm statistics as they were, and no checkpoint or export is written with NaN or inf in it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipelines.base.config import load_config
from pipelines.base.distributed import make_accelerator
from pipelines.training.checkpoint import TrainState, load_checkpoint, save_checkpoint, write_export
from pipelines.training.train import Run, train_step


class WithBatchNorm(torch.nn.Module):
    """The trainer's interface; a poisoned micro-batch (label < 0) sends NaN through the BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, images, augmented, labels, rank=0, world_size=1, **switches):
        x = self.conv(images)
        if bool((labels < 0).any()):
            x = x * float("nan")  # what a diverged layer before the BatchNorm produces
        f = self.head(self.bn(x).mean(dim=(2, 3)))
        loss = f.pow(2).mean() + self.head(self.conv(augmented).mean(dim=(2, 3))).pow(2).mean()
        zero = loss.detach() * 0
        return {"loss": loss, "kd": loss.detach(), "lcl": zero, "gcl": zero, "wcl": zero}


def _run(tmp_path: Path, grad_accum: int = 2) -> Run:
    cfg = load_config(None, [f"train.grad_accum={grad_accum}", "data.batch_size=4", f"run.dir={tmp_path}",
                             "train.nan_tolerance=5"])
    acc = make_accelerator(cfg)
    torch.manual_seed(0)
    model = WithBatchNorm()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model, optimizer = acc.prepare(model, optimizer)
    return Run(cfg, acc, model, optimizer, [0.05], shard_set=None, train_data=None, labels=None, tracker=None,
               state=TrainState(), steps_per_epoch=8, total_steps=4, input_dtype=torch.float32,
               stop=SimpleNamespace(requested=False))


def _step(run: Run, micro: int, poisoned: bool) -> None:
    g = torch.Generator().manual_seed(micro)
    images = torch.randint(0, 255, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    train_step(run, {"image": images, "augmented": images.flip(-1), "label": torch.full((2,), -1 if poisoned else 0),
                     "keys": [], "stats": {"corrupt": 0, "lost": 0}})


def _bn(run: Run) -> dict[str, torch.Tensor]:
    bn = run.accelerator.unwrap_model(run.model).bn
    return {k: v.clone() for k, v in bn.state_dict().items()}


def test_a_skipped_window_leaves_batchnorm_statistics_as_they_were(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _step(run, 0, False)
    _step(run, 1, False)  # window 1: stepped
    before = _bn(run)
    _step(run, 2, False)  # window 2: a clean micro-batch (updates the statistics) ...
    _step(run, 3, True)  # ... then NaN through the BatchNorm: the window is skipped
    assert run.state.step == 1 and run.nan_streak == 1
    after = _bn(run)
    for key in before:
        assert torch.equal(after[key], before[key]), key
    _step(run, 4, False)
    _step(run, 5, False)  # the next window trains from the statistics before the skipped one
    assert run.state.step == 2 and all(bool(torch.isfinite(v.float()).all()) for v in _bn(run).values())


@pytest.mark.parametrize("poison", ["parameter", "buffer", "optimizer"])
def test_a_non_finite_state_is_never_saved_and_the_kept_checkpoint_resumes(tmp_path: Path, poison: str) -> None:
    run = _run(tmp_path, grad_accum=1)
    _step(run, 0, False)
    kept = save_checkpoint(run.accelerator, tmp_path, run.state, run.model, run.optimizer)
    files = {p.name: p.read_bytes() for p in kept.iterdir()}
    module = run.accelerator.unwrap_model(run.model)
    with torch.no_grad():
        if poison == "parameter":
            module.head.weight[0, 0] = float("inf")
        elif poison == "buffer":
            module.bn.running_var[1] = float("nan")
        else:
            next(iter(run.optimizer.optimizer.state.values()))["exp_avg_sq"].fill_(float("nan"))
    run.state.step = 99
    name = {"parameter": "parameter head.weight", "buffer": "buffer bn.running_var",
            "optimizer": "optimizer state tensor"}[poison]
    with pytest.raises(FloatingPointError, match=f"{name}.* holds NaN or inf .*last good checkpoint {kept} is kept"):
        save_checkpoint(run.accelerator, tmp_path, run.state, run.model, run.optimizer)
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == files
    assert not (tmp_path / "checkpoints" / ".tmp-last").exists()
    if poison != "optimizer":
        with pytest.raises(FloatingPointError, match=f"{name} holds NaN or inf .*export is not written"):
            write_export(module, run.cfg, tmp_path, "export", {})
        assert not (tmp_path / "export").exists()

    fresh = _run(tmp_path, grad_accum=1)  # the kept checkpoint resumes: finite, at its own step
    state = load_checkpoint(fresh.accelerator, kept)
    assert state.step == 1 and save_checkpoint(fresh.accelerator, tmp_path, state, fresh.model, fresh.optimizer)


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 14: torch's "PytorchStreamWriter failed writing file" on a full disk becomes one OSError
    naming the checkpoint and the free space, and no .tmp-last is left beside the kept checkpoint."""
    run = _run(tmp_path, grad_accum=1)
    _step(run, 0, False)
    kept = save_checkpoint(run.accelerator, tmp_path, run.state, run.model, run.optimizer)

    def disk_full(path: str) -> None:
        (Path(path) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(run.accelerator, "save_state", disk_full)
    with pytest.raises(OSError) as caught:
        save_checkpoint(run.accelerator, tmp_path, run.state, run.model, run.optimizer)
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and str(tmp_path / "checkpoints" / ".tmp-last") in text
    assert "free there" in text and f"the last checkpoint is kept in {kept}" in text
    assert not (tmp_path / "checkpoints" / ".tmp-last").exists() and (kept / "model.safetensors").is_file()
