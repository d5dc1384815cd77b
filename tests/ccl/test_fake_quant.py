"""Simulated INT8: the rounding against numpy by hand, the simulation against an explicitly rounded forward,
straight-through gradients, and a clean removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccl.models.fake_quant import Int8Simulation, fake_quant_activation, fake_quant_weight


def rounded(x: np.ndarray, scale: np.ndarray | float, zero: int, low: int, high: int) -> np.ndarray:
    """Affine rounding in numpy (round half to even, as the runtimes' nearbyint)."""
    return (np.clip(np.round(x / scale) + zero, low, high) - zero) * scale


def test_weights_are_rounded_to_int8_per_output_channel() -> None:
    w = np.array([[1.0, -0.5, 0.25], [0.3, 0.01, -0.2]], np.float32).reshape(2, 1, 1, 3)
    got = fake_quant_weight(torch.from_numpy(w), axis=0).numpy()
    for c in range(2):  # each channel on its own scale: max |w| / 127
        want = rounded(w[c], np.abs(w[c]).max() / 127, 0, -128, 127)
        np.testing.assert_allclose(got[c], want, rtol=1e-6)
    assert got[0, 0, 0, 1] == pytest.approx(-64 / 127)  # -63.5 steps: half to even
    assert got[1, 0, 0, 1] == pytest.approx(4 * 0.3 / 127)  # 4.23 steps of channel 1's scale
    assert not np.allclose(got, w)


def test_activations_are_rounded_to_uint8_over_a_range_that_holds_zero() -> None:
    x = np.linspace(-1.2, 3.3, 41, dtype=np.float32)
    got = fake_quant_activation(torch.from_numpy(x), -1.0, 3.0).numpy()
    scale = 4.0 / 255
    np.testing.assert_allclose(got, rounded(x, scale, round(1.0 / scale), 0, 255), rtol=1e-5, atol=1e-7)
    assert got.min() == pytest.approx(-round(1.0 / scale) * scale) and got.max() <= 3.0 + scale  # clipped
    positive = fake_quant_activation(torch.tensor([0.0, 0.7, 2.0]), 0.5, 2.0)  # range widened down to 0
    assert positive[0] == 0 and positive[1] == pytest.approx(round(0.7 / (2 / 255)) * 2 / 255)


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


def test_the_simulation_equals_a_forward_through_rounded_weights_and_inputs() -> None:
    torch.manual_seed(0)
    model, x = TwoConvs(), torch.randn(2, 3, 8, 8)
    float_out = model(x).detach()
    sim = Int8Simulation(model)
    with pytest.raises(RuntimeError, match="calibrate"):
        model(x)
    sim.calibrate(lambda: model(x))
    got = model(x)
    # by hand: ranges observed on the float inputs (weights already rounded), then every input rounded
    d, u = model.down, model.up
    wd = fake_quant_weight(d.parametrizations.weight.original.detach(), 0)
    wu = fake_quant_weight(u.parametrizations.weight.original.detach(), 1)  # ConvTranspose2d: (in, out, kh, kw)
    hidden = torch.relu(F.conv2d(x, wd, d.bias, padding=1))
    want = F.conv_transpose2d(fake_quant_activation(torch.relu(F.conv2d(fake_quant_activation(
        x, x.min().item(), x.max().item()), wd, d.bias, padding=1)), hidden.min().item(), hidden.max().item()),
        wu, u.bias, stride=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - float_out).abs().max() > 1e-4  # it is really another model
    got.sum().backward()  # straight-through: the float weights get gradients through the rounding
    assert d.parametrizations.weight.original.grad.abs().sum() > 0
    sim.remove()
    torch.testing.assert_close(model(x), float_out, rtol=0, atol=0)  # the float model, bit for bit
    assert isinstance(model.down.weight, nn.Parameter)


def test_transposed_convolutions_are_rounded_per_output_channel() -> None:
    w = torch.tensor([[1.0, 0.01, 5.0], [0.2, 0.003, 1.0]]).view(2, 3, 1, 1)  # (in, out, kh, kw)
    got = fake_quant_weight(w, axis=1)
    for c in range(3):
        col = w[:, c].numpy()
        np.testing.assert_allclose(got[:, c].numpy(), rounded(col, np.abs(col).max() / 127, 0, -128, 127), rtol=1e-6)


def test_a_model_without_convolutions_is_refused() -> None:
    with pytest.raises(ValueError, match="no convolution"):
        Int8Simulation(nn.Linear(2, 2))
