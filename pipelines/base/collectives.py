"""Every cross-rank reduction and gather of the runtime, on Accelerate's own operations.

Each takes the Accelerator (``None`` outside a distributed run) and is the identity on one process.
All ranks must call them together, in the same order; an error path never calls one (DESIGN.md
section 7). The losses gather their features with gradients in ``ccl/losses/gather.py``, and the
synchronised BatchNorm's autograd all-reduce lives with its layer (``pipelines.base.distributed``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def world_of(acc: Any) -> int:
    """The number of ranks (1 without an Accelerator)."""
    return 1 if acc is None else acc.num_processes


def sum_over_ranks(acc: Any, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64: counts and loss sums stay exact)."""
    if world_of(acc) == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    return acc.reduce(t, reduction="sum").tolist()


def sum_tensor(acc: Any, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks, returned on the CPU."""
    if world_of(acc) == 1:
        return tensor
    return acc.reduce(tensor.to(acc.device), reduction="sum").cpu()


def gather_objects(acc: Any, obj: Any) -> list[Any]:
    """``obj`` of every rank (any picklable object), in rank order."""
    if world_of(acc) == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def all_gather_rows(acc: Any, rows: np.ndarray) -> np.ndarray:
    """(k, n_rank) arrays of every rank concatenated along axis 1, as float64 (ranks may hold different n)."""
    if world_of(acc) == 1:
        return rows
    t = torch.from_numpy(np.ascontiguousarray(rows, np.float64)).to(acc.device)
    lengths = acc.gather(torch.tensor([t.shape[1]], device=acc.device)).tolist()
    parts = acc.gather(acc.pad_across_processes(t, dim=1)[None])  # (ranks, k, longest)
    return torch.cat([p[:, :n] for p, n in zip(parts, lengths, strict=True)], dim=1).cpu().numpy()
