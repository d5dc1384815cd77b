"""Two gloo ranks holding halves of a batch reproduce one process on the whole batch: loss and gradients.

Each rank computes its loss as the mean over its own anchors against the
gathered global batch and back-propagates it; parameter gradients are then
averaged over ranks (what DDP does), feature gradients divided by the world
size (the same average, for the rows each rank owns). With a no-grad gather
the loss is unchanged but the gradients are wrong, which the test asserts too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ccl.losses import gather, global_contrastive_loss, local_contrastive_loss, supcon_loss
from pipelines.experiments.jobs import free_port

WORLD = 2
N = 8
LABELS = [0, 1, 0, 2, 1, 0, 2, 1]
CASES = {
    "supcon": dict(kind="vector"),
    "global": dict(kind="two_view_vector"),
    "local_1": dict(kind="dense", window=1),
    "local_3": dict(kind="dense", window=3),
    "local_full": dict(kind="dense", window="full"),
    "local_3_all": dict(kind="dense", window=3, negatives="all"),
    "local_view_match": dict(kind="dense", window="full", positives="view", match=True),
    "local_3_view_all_match": dict(kind="dense", window=3, positives="view", negatives="all", match=True),
}
EQUAL = (4, 4)
UNEQUAL = (3, 5)  # a last partial batch: exact per anchor thanks to pad-and-cut in the gather


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    shape = (N, 5) if kind != "dense" else (N, 3, 4, 4)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(3)
    layer = torch.nn.Linear(5, 6) if kind != "dense" else torch.nn.Conv2d(3, 6, 1)
    return layer.double()


def run_case(name: str, lo: int, hi: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Loss share, feature gradients (rows lo:hi) and parameter gradients for rows lo:hi of the batch."""
    spec = CASES[name]
    xa, xb = (x[lo:hi] for x in _inputs(spec["kind"]))
    labels = torch.tensor(LABELS[lo:hi])
    model = _model(spec["kind"])
    fa, fb = model(xa), model(xb)
    fa.retain_grad(), fb.retain_grad()
    if name == "supcon":
        loss = supcon_loss(fa, labels, 0.1, rank, world)
    elif name == "global":
        loss = global_contrastive_loss(fa, fb, labels, 0.1, rank, world)
    else:
        match = (xa + 0.5 * xb, xb) if spec.get("match") else None  # any maps of the views' shape
        loss = local_contrastive_loss(fa, fb, labels, 0.1, spec["window"], rank, world, chunk=8,
                                      positives=spec.get("positives", "class"),
                                      negatives=spec.get("negatives", "window"), match=match)
    # Weight n_r * W / N is 1 for equal local batches; it makes unequal ones exact as well.
    scale = (hi - lo) * world / N
    (scale * loss).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    if world > 1:
        dist.all_reduce(grads)
    share = (scale * loss.detach()) / world
    fb_grad = fb.grad if fb.grad is not None else torch.zeros_like(fb)  # supcon uses one view only
    return {"loss": share, "fa": fa.grad / world, "fb": fb_grad / world, "params": grads / world}


def _bounds(sizes: tuple[int, ...], rank: int) -> tuple[int, int]:
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def gather_local_grad_only(x: torch.Tensor, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, int]:
    """The common WRONG gather: other ranks' rows detached, own rows keep their graph."""
    gathered, offset = gather.gather_no_grad(x, rank, world_size)
    if world_size == 1:
        return x, 0
    return torch.cat([gathered[:offset], x, gathered[offset + x.shape[0]:]], dim=0), offset


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for sizes in (EQUAL, UNEQUAL):
            for name in CASES:
                results[(name, sizes, "grad")] = run_case(name, *_bounds(sizes, rank), rank, WORLD)
        gather.gather_with_grad = gather_local_grad_only  # the classic mistake
        for name in CASES:
            results[(name, EQUAL, "nograd")] = run_case(name, *_bounds(EQUAL, rank), rank, WORLD)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _merged(ranks, key) -> dict[str, torch.Tensor]:
    parts = [r[key] for r in ranks]
    return {
        "loss": sum(p["loss"] for p in parts),
        "fa": torch.cat([p["fa"] for p in parts]),
        "fb": torch.cat([p["fb"] for p in parts]),
        "params": parts[0]["params"],
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [EQUAL, UNEQUAL], ids=["equal", "unequal"])
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(ranks, name, sizes):
    single = run_case(name, 0, N, rank=0, world=1)
    merged = _merged(ranks, (name, sizes, "grad"))
    assert _rel(merged["loss"], single["loss"]) <= 1e-6
    for key in ("fa", "fb", "params"):
        assert _rel(merged[key], single[key]) <= 1e-6, key
    torch.testing.assert_close(ranks[0][(name, sizes, "grad")]["params"], ranks[1][(name, sizes, "grad")]["params"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_no_grad_gather_breaks_gradients(ranks, name):
    single = run_case(name, 0, N, rank=0, world=1)
    merged = _merged(ranks, (name, EQUAL, "nograd"))
    assert _rel(merged["loss"], single["loss"]) <= 1e-6  # the forward is the same ...
    assert _rel(merged["params"], single["params"]) > 1e-2  # ... the gradients are not
    assert _rel(merged["fa"], single["fa"]) > 1e-2
