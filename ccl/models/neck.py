"""One-class bottleneck embedding (OCBE, RD4AD's "bn"): fuses the scales into one compact code.

For teacher channels (c_0, ..., c_{L-1}) each scale but the last is brought to
the last scale's size by a chain of conv3x3 + BN + ReLU (scale i passes through
widths c_{i+1}, ..., c_{L-1}); the L maps are concatenated (L * c_{L-1}
channels) and three bottleneck blocks, the first with stride 2, give
2 * c_{L-1} channels. For wide_resnet50_2 (256, 512, 1024) this is exactly
RD4AD's BN_layer: conv1/bn1 256->512, conv2/bn2 512->1024, conv3/bn3 512->1024,
bn_layer 3072 -> 2048 at 8x8 for 256 px inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ccl.models.bottlenecks import EXPANSION, Bottleneck, conv3x3, init_convs

# RD4AD's BN_layer also defines conv4 / bn4, which its forward never uses; official
# checkpoints carry them. They are dropped on load instead of being kept as dead
# parameters (DDP rejects parameters that never receive a gradient).
RD4AD_UNUSED = ("conv4.", "bn4.")


class OCBE(nn.Module):
    """Neck: multi-scale projected features [(B, c_i, h_i, w_i)] -> (B, 2*c_last, h_last/2, w_last/2)."""

    def __init__(
        self, channels: Sequence[int], reductions: Sequence[int], width_mult: int = 1, blocks: int = 3
    ) -> None:
        super().__init__()
        channels, n = list(channels), len(channels)
        self.chains: list[list[int]] = []
        k = 0
        for i in range(n - 1):
            chain = []
            for j in range(i + 1, n):
                k += 1
                stride = reductions[j] // reductions[j - 1]
                setattr(self, f"conv{k}", conv3x3(channels[j - 1], channels[j], stride))
                setattr(self, f"bn{k}", nn.BatchNorm2d(channels[j]))
                chain.append(k)
            self.chains.append(chain)
        self.relu = nn.ReLU(inplace=True)
        c_last = channels[-1]
        planes = c_last // (EXPANSION // 2)  # output 2 * c_last
        width = planes * width_mult
        layers = [Bottleneck(n * c_last, planes, width, stride=2)]
        layers += [Bottleneck(planes * EXPANSION, planes, width) for _ in range(blocks - 1)]
        self.bn_layer = nn.Sequential(*layers)
        self.out_channels = planes * EXPANSION
        init_convs(self)
        self.register_load_state_dict_pre_hook(_drop_rd4ad_unused)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = []
        for chain, x in zip(self.chains, feats):
            for k in chain:
                x = self.relu(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x)))
            fused.append(x)
        fused.append(feats[-1])
        return self.bn_layer(torch.cat(fused, dim=1)).contiguous()  # (B, 2*c_last, h/2, w/2)


def _drop_rd4ad_unused(module: OCBE, state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook: forget RD4AD's unused conv4 / bn4 tensors when this neck has no such layers."""
    for name in RD4AD_UNUSED:
        if hasattr(module, name.rstrip(".")):
            continue
        for key in [k for k in state_dict if k.startswith(prefix + name)]:
            del state_dict[key]


def build_neck(channels: Sequence[int], reductions: Sequence[int], width_mult: int = 1) -> OCBE:
    """OCBE neck for a teacher's channels and reductions (width_mult 2 for wide ResNets)."""
    return OCBE(channels, reductions, width_mult)
