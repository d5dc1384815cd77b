"""Knowledge-distillation loss of Reverse Distillation (RD4AD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ccl.precision import float32_math


@float32_math
def kd_loss(
    teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor], mode: str = "flat"
) -> torch.Tensor:
    """Sum over scales of the mean over the batch of (1 - cosine similarity).

    mode "flat" (RD4AD): one cosine per sample over the flattened C*H*W map;
    mode "pixel": one cosine per pixel over C, averaged over the batch and pixels.
    Feature lists hold (B, C, H, W) maps in the same order and shapes.
    """
    if len(teacher_feats) != len(student_feats):
        raise ValueError(f"{len(teacher_feats)} teacher scales vs {len(student_feats)} student scales")
    if mode not in ("flat", "pixel"):
        raise ValueError(f"kd mode must be 'flat' or 'pixel', got {mode!r}")
    total = student_feats[0].new_zeros(())
    for t, s in zip(teacher_feats, student_feats):
        if t.shape != s.shape:
            raise ValueError(f"teacher map {tuple(t.shape)} vs student map {tuple(s.shape)}")
        if mode == "flat":
            cos = F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)  # (B,)
        else:
            cos = F.cosine_similarity(t, s, dim=1)  # (B, H, W)
        total = total + (1 - cos).mean()
    return total
