"""bf16 autocast: the model's convolutions run in bf16, its losses and anomaly maps in float32."""

from __future__ import annotations

import pytest
import torch

from ccl.losses import local as local_module
from ccl.losses import supcon as supcon_module
from ccl.models import RDCCL
from ccl.precision import float32_math


@float32_math
def _product(a: torch.Tensor, b: list[torch.Tensor]) -> torch.Tensor:
    return a @ b[0]


def test_float32_math_turns_autocast_off_and_widens_half_arguments() -> None:
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16  # autocast is on here ...
        assert _product(a, [b]).dtype == torch.float32  # ... and off inside the decorated function
        assert _product(a.bfloat16(), [b.bfloat16()]).dtype == torch.float32
    torch.testing.assert_close(_product(a, [b]), a @ b, rtol=0, atol=0)


def test_float32_math_passes_full_precision_tensors_unchanged() -> None:
    seen = []

    @float32_math
    def keep(x: torch.Tensor, ys: tuple[torch.Tensor, ...]) -> None:
        seen.extend([x, *ys])

    x, y = torch.randn(2, dtype=torch.float64), torch.randn(2)
    keep(x, (y,))
    assert seen[0] is x and seen[1] is y


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, 64, generator=g)
    return x, x + 0.1 * torch.randn(x.shape, generator=g), torch.tensor([0, 0, 1, 1])


@pytest.fixture(scope="module")
def model() -> RDCCL:
    torch.manual_seed(0)
    return RDCCL(teacher="resnet18", projector="2-cblocks").train()


@pytest.mark.slow
def test_bf16_autocast_runs_the_convolutions_in_bf16_and_the_losses_in_float32(model, monkeypatch) -> None:
    x, aug, labels = _batch()
    with torch.no_grad():
        full = model(x, aug, labels)
    dtypes: dict[str, set] = {"conv": set(), "local sims": set(), "global rows": set()}
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes["conv"].add(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    reduce, rows = local_module._reduce, supcon_module.contrast_rows
    monkeypatch.setattr(local_module, "_reduce",
                        lambda sims, *a: dtypes["local sims"].add(sims.dtype) or reduce(sims, *a))
    monkeypatch.setattr(supcon_module, "contrast_rows",
                        lambda f, *a: dtypes["global rows"].add(f.dtype) or rows(f, *a))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, aug, labels)
            maps = model.eval()(x)["anomaly_map"]
    finally:
        model.train()
        for h in hooks:
            h.remove()
    assert dtypes == {"conv": {torch.bfloat16}, "local sims": {torch.float32}, "global rows": {torch.float32}}
    assert maps.dtype == torch.float32
    for k in ("kd", "lcl", "gcl"):
        assert half[k].dtype == torch.float32, k
        # bf16 features (8 significant bits) move the losses by well under 2 %; measured: 0.01-0.13 %
        assert half[k].item() == pytest.approx(full[k].item(), rel=2e-2), k
        assert half[k].item() != full[k].item(), k  # the bf16 convolutions did change the features
