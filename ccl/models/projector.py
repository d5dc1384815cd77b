"""The CCL projector phi_p: one small conv stack per teacher scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Channel ratios of each variant, relative to the scale's channels c.
_RATIOS = {
    "4-cblocks": (2, 4, 2, 1),  # c -> c/2 -> c/4 -> c/2 -> c (the paper's default)
    "2-cblocks": (2, 1),  # c -> c/2 -> c
}
PROJECTORS = ("4-cblocks", "2-cblocks", "2-mlp", "none")


def _cblock(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 + InstanceNorm + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.InstanceNorm2d(c_out), nn.LeakyReLU(inplace=True)
    )


def _stack(kind: str, c: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "2-mlp":
        # Per-pixel MLP: 1x1 conv, LeakyReLU, 1x1 conv.
        return nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(c // 2, c, 1))
    if c % 4:
        raise ValueError(f"projector {kind!r} needs channels divisible by 4, got {c}")
    widths = [c] + [c // r for r in _RATIOS[kind]]
    return nn.Sequential(*[_cblock(a, b) for a, b in zip(widths[:-1], widths[1:])])


class Projector(nn.Module):
    """Maps each teacher scale (B, c_i, h_i, w_i) to a map of the same shape.

    ``residual``: f + g * stack(f) with a per-channel gain g that starts at 0 (ReZero), so training starts
    from the teacher's own features (Joint RD) and the stack only adds what the losses ask of it. The
    paper's projector (not residual) replaces the teacher's features by a randomly initialised map.
    """

    def __init__(self, channels: Sequence[int], kind: str = "4-cblocks", residual: bool = False) -> None:
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"unknown projector {kind!r}; choose one of {PROJECTORS}")
        self.kind = kind
        self.residual = residual and kind != "none"
        self.stacks = nn.ModuleList([_stack(kind, c) for c in channels])
        gains = [nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels] if self.residual else []
        self.gains = nn.ParameterList(gains)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self.residual:
            return [stack(f) for stack, f in zip(self.stacks, feats)]
        return [f + gain * stack(f) for stack, gain, f in zip(self.stacks, self.gains, feats)]


def build_projector(channels: Sequence[int], kind: str = "4-cblocks", residual: bool = False) -> Projector:
    """Projector for the teacher's channel list; kind in PROJECTORS ("none" is the identity)."""
    return Projector(channels, kind, residual)
