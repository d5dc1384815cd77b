"""Reverse ResNet decoder of RD: from the neck's code back to the teacher's scales.

Layer k (k = 1..L) up-samples and produces scale L-k with planes c_{L-k} / 4
(bottleneck blocks [3, 4, 6] for three scales). For wide_resnet50_2 this is
RD4AD's de_wide_resnet50_2: layer1 2048 -> 1024 @16, layer2 -> 512 @32,
layer3 -> 256 @64, with ConvTranspose2d k2 s2 up-sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ccl.models.bottlenecks import EXPANSION, ReverseBottleneck, init_convs

DEFAULT_BLOCKS = (3, 4, 6, 3)


class ReverseDecoder(nn.Module):
    """Code (B, c_in, h, w) -> [(B, c_i, h_i, w_i)] in the teacher's order (shallowest first)."""

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        in_channels: int,
        width_mult: int = 1,
        blocks: Sequence[int] | None = None,
        signed: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        n = len(channels)
        blocks = list(blocks or DEFAULT_BLOCKS[:n])
        signed = list(signed or [False] * n)  # per scale: the teacher's features take negative values
        self.n_layers = n
        c_in = in_channels
        for k in range(1, n + 1):
            scale = n - k
            if channels[scale] % EXPANSION:
                raise ValueError(f"decoder needs channels divisible by {EXPANSION}, got {channels[scale]}")
            planes = channels[scale] // EXPANSION
            # The first layer undoes the neck's stride 2, the others the teacher's scale steps.
            stride = 2 if k == 1 else reductions[scale + 1] // reductions[scale]
            layers = [ReverseBottleneck(c_in, planes, planes * width_mult, stride)]
            layers += [ReverseBottleneck(planes * EXPANSION, planes, planes * width_mult)
                       for _ in range(blocks[k - 1] - 1)]
            layers[-1].final_relu = not signed[scale]  # the scale's output matches the teacher's sign range
            setattr(self, f"layer{k}", nn.Sequential(*layers))
            c_in = planes * EXPANSION
        init_convs(self)

    def forward(self, code: torch.Tensor,
                between: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``between(k, x)``, when given, changes layer k's output before layer k + 1 reads it (k = 1..L-1); the
        returned maps stay the layers' own."""
        outs = []
        x = code
        for k in range(1, self.n_layers + 1):
            x = getattr(self, f"layer{k}")(x)
            outs.append(x)
            if between is not None and k < self.n_layers:
                x = between(k, x)
        return outs[::-1]

    def layer_channels(self) -> list[int]:
        """The output channels of layers 1..L, in decoding order."""
        return [getattr(self, f"layer{k}")[-1].conv3.out_channels for k in range(1, self.n_layers + 1)]


def build_decoder(
    channels: Sequence[int], reductions: Sequence[int], in_channels: int, width_mult: int = 1,
    signed: Sequence[bool] | None = None,
) -> ReverseDecoder:
    """Reverse decoder mirroring the teacher (width_mult 2 for wide ResNets; ``signed`` per scale)."""
    return ReverseDecoder(channels, reductions, in_channels, width_mult, signed=signed)
