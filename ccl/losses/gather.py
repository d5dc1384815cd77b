"""Cross-rank gathers for the contrastive losses: the only collectives in ccl/.

Contrastive denominators span the global batch (DESIGN section 7). Features are
gathered WITH gradient (torch.distributed.nn.functional.all_gather sends each
rank's gradient back to the rank that owns the rows); labels and ids without.
Each rank then takes the mean loss over its own anchors, and the usual DDP /
DeepSpeed average of gradients over ranks equals the single-process gradient.

Local batch sizes may differ between ranks (a last partial batch): rows are
padded to the largest size for the collective and the padding is cut away
again, so the gathered tensor holds exactly the real rows. The losses stay exact
per anchor, but DDP weights every rank equally, so the gradient equals the
single-process one only when all ranks hold the same number of samples.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

# torch 2.14 marks this autograd all_gather deprecated in favour of a private module; it is the
# documented one that returns gradients to the owning rank, so keep it and silence only that notice.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")


def _local_sizes(n: int, world_size: int, device: torch.device) -> list[int]:
    """Row counts of every rank (one tiny all_gather)."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def _gather(x: torch.Tensor, rank: int, world_size: int, with_grad: bool) -> tuple[torch.Tensor, int]:
    if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(
            f"loss called with rank {rank} / world size {world_size}, "
            f"but the process group has rank {dist.get_rank()} / world size {dist.get_world_size()}"
        )
    sizes = _local_sizes(x.shape[0], world_size, x.device)
    padded = _pad_rows(x, max(sizes))
    if with_grad:
        parts = list(dist_nn.all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.detach().contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes, strict=True)]
    return torch.cat(parts, dim=0), sum(sizes[:rank])


def gather_with_grad(x: torch.Tensor, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, int]:
    """Concatenate `x` (N_r, ...) of all ranks along dim 0, gradients flowing back to their owners.

    Returns (gathered (sum_r N_r, ...), offset of this rank's rows). Identity at world size 1.
    """
    if world_size == 1:
        return x, 0
    return _gather(x, rank, world_size, with_grad=True)


def gather_no_grad(x: torch.Tensor, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, int]:
    """Like gather_with_grad but detached (labels, ids); identity at world size 1."""
    if world_size == 1:
        return x, 0
    return _gather(x, rank, world_size, with_grad=False)

