"""Class conditioning of the student: a per-class affine modulation (FiLM) of the neck's code.

A joint model's decoder learns one normal set spanning every class, so a look-alike sibling's texture pasted
into an image is reconstructed and missed (README, "One model for all classes"). Conditioning the decoder on
the image's class lets it learn what this class may look like; the class is known at inference on an
inspection line (one product per station), as it is to one model per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ClassFiLM(nn.Module):
    """code (B, D, h, w), classes (B,) -> code * (1 + scale[class]) + shift[class].

    Both tables start at zero: an untrained conditioning is the identity, so training starts from Joint RD.
    ``class_names`` are the classes in index order (the training's merged class index).
    """

    def __init__(self, class_names: Sequence[str], channels: int) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class conditioning needs distinct class names, got {list(self.class_names)[:5]}")
        self.scale = nn.Embedding(len(self.class_names), channels)
        self.shift = nn.Embedding(len(self.class_names), channels)
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, code: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        scale = self.scale(classes).to(code.dtype)[:, :, None, None]  # (B, D, 1, 1)
        shift = self.shift(classes).to(code.dtype)[:, :, None, None]
        return code * (1 + scale) + shift

    def other_classes(self, classes: torch.Tensor) -> torch.Tensor:
        """For every sample a class drawn uniformly from the other classes (B,): the wrong condition."""
        k = self.num_classes
        if k < 2:
            raise ValueError("a wrong class needs at least 2 classes")
        offset = torch.randint(1, k, classes.shape, device=classes.device)
        return (classes + offset) % k
