"""torch.compile of the student path (RDCCL.compile_student, ``train.compile=true``): compiled training steps
equal eager ones.

The backend here is aot_eager: dynamo captures the projector, neck (both BN-statistics variants of the
two views) and decoder, AOTAutograd traces their forward and backward, and eager kernels run them. So
this checks what our code contributes (capture, guards, recompilation, autograd through the compiled
parts, state dict unchanged) in CPU-test time; inductor's generated kernels are left to bench/gpu.py
(inductor's C++ build of this graph took 11 minutes on the 2-core CI machine).

Tolerances (measured in parentheses): step-1 losses rel 1e-6 (bit-equal); step-1 gradients
|compiled - eager| <= 1e-5 x the largest gradient of the model (6e-7; per-tensor relative errors are
meaningless for the projector biases before InstanceNorm, whose true gradient is 0); step-2 losses,
after one Adam step, rel 1e-5 (2e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from ccl.models import RDCCL


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, 64, generator=g)
    return x, x + 0.1 * torch.randn(x.shape, generator=g), torch.tensor([0, 0, 1, 1])


def _two_steps(model: RDCCL) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Losses of two Adam steps and the gradients of the first."""
    x, aug, labels = _batch()
    opt = torch.optim.Adam(model.param_groups(1e-3, 5e-3), betas=(0.5, 0.999))
    losses, grads = [], {}
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        out = model(x, aug, labels)
        out["loss"].backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        losses.append({k: out[k].item() for k in ("loss", "kd", "lcl", "gcl")})
    return losses, grads


@pytest.mark.slow
def test_compiled_training_steps_equal_eager_ones() -> None:
    torch.manual_seed(0)
    eager = RDCCL(teacher="resnet18", projector="2-cblocks").train()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile_student(counter)
    keys = list(compiled.state_dict())
    (eager_losses, eager_grads), (comp_losses, comp_grads) = _two_steps(eager), _two_steps(compiled)

    # projector, decoder, and the neck twice: the augmented view's pass runs with frozen BN statistics
    assert counter.frame_count >= 4
    assert keys == list(eager.state_dict()) == list(compiled.state_dict())  # exports do not change
    for k in eager_losses[0]:
        assert comp_losses[0][k] == pytest.approx(eager_losses[0][k], rel=1e-6), k
        assert comp_losses[1][k] == pytest.approx(eager_losses[1][k], rel=1e-5), k
    assert set(comp_grads) == set(eager_grads)
    top = max(float(g.abs().max()) for g in eager_grads.values())
    for name, g in eager_grads.items():
        assert float((comp_grads[name] - g).abs().max()) <= 1e-5 * top, name
