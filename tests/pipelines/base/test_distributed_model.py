"""The whole model under 2 gloo ranks (CPU synchronised BN, gathered contrastive losses) equals one process.

float64, so the comparison is exact up to summation order: the loss of the concatenated batch and the
rank-averaged gradients of every trainable parameter, with both contrastive terms on.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ccl.models import RDCCL
from pipelines.base.distributed import convert_sync_batchnorm
from pipelines.experiments.jobs import free_port

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
RANK_ROWS = (torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7]))  # every rank holds all four classes
pytestmark = pytest.mark.slow  # two gloo ranks


# The paper's reading, and every other switch of the contrastive terms at once.
SWITCHES = {"paper": {}, "switches": dict(local_positives="view", local_negatives="all", local_match="teacher",
                                          local_window=3, reduction="sum")}


def _model(switches: str = "paper") -> RDCCL:
    torch.manual_seed(0)
    return RDCCL(teacher="resnet18", pretrained="none", projector="2-mlp", **SWITCHES[switches]).double().train()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64),
            torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64))


def _rank(rank: int, port: int, queue, switches: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = convert_sync_batchnorm(_model(switches))
        images, augmented = _batch()
        rows = RANK_ROWS[rank]
        out = model(images[rows], augmented[rows], LABELS[rows], rank=rank, world_size=2)
        out["loss"].backward()
        loss = out["loss"].detach().clone()
        dist.all_reduce(loss)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for g in grads.values():  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= 2
        if rank == 0:
            queue.put((float(loss) / 2, {n: g.numpy() for n, g in grads.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("switches", list(SWITCHES))
def test_two_ranks_equal_one_process_for_the_whole_model(switches: str) -> None:
    model = _model(switches)
    images, augmented = _batch()
    rows = torch.cat(RANK_ROWS)
    out = model(images[rows], augmented[rows], LABELS[rows])
    out["loss"].backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue, switches)) for r in range(2)]
    for p in procs:
        p.start()
    loss, grads = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    expected_loss = out["loss"].item()
    assert abs(loss - expected_loss) <= 1e-9 * abs(expected_loss)
    assert set(grads) == set(expected) and any(n.startswith("neck.") for n in grads)
    for name, g in expected.items():
        diff = (torch.from_numpy(grads[name]) - g).abs().max()
        assert diff <= 1e-6 * g.abs().max() + 1e-12, (name, float(diff), float(g.abs().max()))
