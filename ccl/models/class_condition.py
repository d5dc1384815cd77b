"""Class conditioning of the student: a per-class affine modulation (FiLM) of the neck's code.

A joint model's decoder learns one normal set spanning every class, so a look-alike sibling's texture pasted
into an image is reconstructed and missed (README, "One model for all classes"). Conditioning the decoder on
the image's class lets it learn what this class may look like; the class is known at inference on an
inspection line (one product per station), as it is to one model per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class ClassFiLM(nn.Module):
    """code (B, D, h, w), classes (B,) -> code * (1 + scale[class]) + shift[class].

    Both tables start at zero: an untrained conditioning is the identity, so training starts from Joint RD.
    ``class_names`` are the classes in index order (the training's merged class index).
    """

    def __init__(self, class_names: Sequence[str], channels: int, between: Sequence[int] = ()) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class conditioning needs distinct class names, got {list(self.class_names)[:5]}")
        k = len(self.class_names)
        self.scale, self.shift = zero_table(k, channels), zero_table(k, channels)
        # ``between``: channels of the decoder's inner maps modulated too (one pair of tables each), or none
        self.between = nn.ModuleList(nn.ModuleList([zero_table(k, c), zero_table(k, c)]) for c in between)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, code: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return modulate(code, self.scale(classes), self.shift(classes))

    def inner(self, classes: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor] | None:
        """The decoder's ``between`` for these classes: layer k's output modulated by the k-th pair of tables."""
        if not len(self.between):
            return None
        return lambda k, x: modulate(x, self.between[k - 1][0](classes), self.between[k - 1][1](classes))

    def other_classes(self, classes: torch.Tensor) -> torch.Tensor:
        """For every sample a class drawn uniformly from the other classes (B,): the wrong condition."""
        k = self.num_classes
        if k < 2:
            raise ValueError("a wrong class needs at least 2 classes")
        offset = torch.randint(1, k, classes.shape, device=classes.device)
        return (classes + offset) % k


def zero_table(classes: int, channels: int) -> nn.Embedding:
    """A (classes, channels) table that starts at zero (no modulation)."""
    table = nn.Embedding(classes, channels)
    nn.init.zeros_(table.weight)
    return table


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x (B, C, h, w) * (1 + scale (B, C)) + shift (B, C)."""
    return x * (1 + scale.to(x.dtype)[:, :, None, None]) + shift.to(x.dtype)[:, :, None, None]
