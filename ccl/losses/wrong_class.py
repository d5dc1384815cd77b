"""Wrong-class reconstruction margin of a class-conditioned student.

Under its own class the student rebuilds the teacher's features (the KD loss); under another class's
condition it must not: the mean per-pixel distance of that reconstruction has to exceed the right one by
``margin``. Training images are normal, so another class's whole image stands for content the class never
shows; nothing about the test defects is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ccl.precision import float32_math


@float32_math
def pixel_distance(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per sample (B,): mean over scales of the mean over pixels of 1 - cos(teacher, student) over channels."""
    per_scale = [(1 - F.cosine_similarity(t, s, dim=1)).mean(dim=(1, 2)) for t, s in zip(teacher_feats, student_feats)]
    return torch.stack(per_scale).mean(dim=0)


def wrong_class_loss(right: torch.Tensor, wrong: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_b max(0, margin + right_b - wrong_b) for distances (B,) under the right and a wrong class.

    ``right`` is a target here, not trained by this term (detached): the KD loss keeps the right reconstruction
    good; this term only pushes the wrong one away.
    """
    return F.relu(margin + right.detach() - wrong).mean()
