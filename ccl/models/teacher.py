"""Frozen timm encoder (the RD teacher) returning multi-scale feature maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ccl.models.offline_mobilenet import TIMM_NAME as OFFLINE_NAME
from ccl.models.offline_mobilenet import load_offline_mobilenet

# Strides 4 / 8 / 16 (RD4AD's layers 1-3 for ResNets; 24 / 32 / 96 channels for MobileNetV2).
DEFAULT_OUT_INDICES = (1, 2, 3)


class Teacher(nn.Module):
    """timm `features_only` model, frozen and always in eval mode (BN statistics never move)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()

    def train(self, mode: bool = True) -> "Teacher":
        # Whatever the caller asks, the encoder stays in eval mode.
        return super().train(False)

    @property
    def channels(self) -> list[int]:
        return list(self.body.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        return list(self.body.feature_info.reduction())

    def signed(self, size: int = 64) -> list[bool]:
        """Per scale: whether the features take negative values (probed once on a fixed random input).

        ResNet stages end in a ReLU (features >= 0, as RD4AD's decoder assumes); MobileNetV2's
        linear bottlenecks do not, and the decoder must then be able to output negative values.
        """
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        return [bool((f < 0).any()) for f in self(probe)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> feature maps [(B, C_i, H/r_i, W/r_i)], no gradient."""
        with torch.no_grad():
            return [f.detach() for f in self.body(images)]


def _create(name: str, out_indices: Sequence[int], pretrained: str) -> nn.Module:
    import timm

    kwargs = dict(features_only=True, out_indices=tuple(out_indices))
    if pretrained == "none":
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained == "hub":
        return timm.create_model(name, pretrained=True, **kwargs)
    if pretrained == "offline":
        if name != OFFLINE_NAME:
            raise ValueError(f"pretrained='offline' provides {OFFLINE_NAME!r} only, not {name!r}")
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_offline_mobilenet(model)
        return model
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"{pretrained}: teacher weights file not found (pretrained is 'hub', 'none', 'offline' or a .pth/.safetensors path)"
        )
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def build_teacher(
    name: str = "wide_resnet50_2", pretrained: str = "none", out_indices: Sequence[int] = DEFAULT_OUT_INDICES
) -> Teacher:
    """Frozen timm encoder.

    pretrained: "hub" (timm download), "none" (random), "offline" (MobileNetV2
    ImageNet weights from the fdet offline package; name must be mobilenetv2_100),
    or the path of a local .pth / .safetensors state dict.
    """
    return Teacher(_create(name, out_indices, str(pretrained)))
