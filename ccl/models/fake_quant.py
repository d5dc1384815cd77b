"""Simulated INT8 inference in a float model, for quantization-aware fine-tuning (QAT).

    sim = Int8Simulation(model)              # every Conv2d / ConvTranspose2d of the model
    sim.calibrate(lambda: model(batch))      # activation ranges: min / max over what the callable runs
    loss = kd_loss(*features(batch))         # forward through rounded weights and inputs
    loss.backward()                          # straight-through gradients (torch's fake-quantize ops)
    sim.remove()                             # the float weights, trained, without the simulation

What is simulated is what the deployed INT8 graphs compute (``pipelines.deploy.precision``): weights
rounded per output channel, symmetric int8; every convolution's input rounded per tensor, asymmetric
uint8, over a range that holds zero and the calibration images' min / max. Post-training INT8 turns an RD
model's maps into another model's (the cosine between teacher and student features moves as much as a
defect does); training the student through the rounding teaches it to reproduce the rounded teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

WEIGHT_LEVELS = (-128, 127)
ACTIVATION_LEVELS = (0, 255)


def fake_quant_weight(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """``weight`` rounded to int8 per channel along ``axis`` (scale max|w| / 127, zero point 0)."""
    others = [d for d in range(weight.dim()) if d != axis]
    scale = (weight.detach().abs().amax(dim=others) / WEIGHT_LEVELS[1]).clamp_min(1e-12)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, axis, *WEIGHT_LEVELS)


def fake_quant_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` rounded to uint8 over [min(low, 0), max(high, 0)] (zero exactly representable, as the runtimes do)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / ACTIVATION_LEVELS[1]
    zero = int(round(-low / scale))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, *ACTIVATION_LEVELS)


class _RoundedWeight(nn.Module):
    """A parametrization: the convolution reads its weight through ``fake_quant_weight``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(weight, self.axis)


class _InputRange:
    """A forward pre-hook: records the input's min / max while observing, rounds the input once calibrated."""

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None
        self.observing = False

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = inputs[0]
        if self.observing:
            low, high = float(x.detach().min()), float(x.detach().max())
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)
            return None
        if self.low is None:
            raise RuntimeError("Int8Simulation: call calibrate() before running the simulated model")
        return (fake_quant_activation(x, self.low, self.high), *inputs[1:])


class Int8Simulation:
    """INT8 rounding of every convolution of ``model`` (weights and inputs) until ``remove()``."""

    def __init__(self, model: nn.Module) -> None:
        self.convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if not self.convs:
            raise ValueError("Int8Simulation: the model has no convolution to quantize")
        self.ranges = [_InputRange() for _ in self.convs]
        self._hooks = []
        for conv, observed in zip(self.convs, self.ranges, strict=True):
            axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0  # the output channels of the weight
            parametrize.register_parametrization(conv, "weight", _RoundedWeight(axis))
            self._hooks.append(conv.register_forward_pre_hook(observed))

    def calibrate(self, run: Callable[[], object]) -> None:
        """Forget the ranges, observe what ``run()`` feeds every convolution (float inputs), round from then on."""
        for observed in self.ranges:
            observed.low = observed.high = None
            observed.observing = True
        try:
            with torch.no_grad():
                run()
        finally:
            for observed in self.ranges:
                observed.observing = False

    def remove(self) -> None:
        """Back to the float model: hooks gone, each weight its float (trained) value."""
        for hook in self._hooks:
            hook.remove()
        for conv in self.convs:
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
        self._hooks = []
