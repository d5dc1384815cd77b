"""Cost of CCL on top of RD, measured side by side in one run (CPU).

Prints:
  1. train step time (forward + backward + Adam step): Joint RD (no projector, lambdas 0) vs RD+CCL (goal <= 1.6x)
  2. inference time (forward + anomaly map): RD vs RD+CCL (goal <= 1.10x; the paper's FLOPs ratio is 1.08)
  3. share of an RD+CCL DDP step spent in the cross-rank gathers at 2 gloo ranks (goal <= 5%)
  4. peak memory of local CL, window "full", chunked vs unchunked (forward + backward, fresh subprocesses)

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/step.py [--teacher resnet18] [--batch 8] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.timing import interleaved  # noqa: E402

if TYPE_CHECKING:
    from ccl.models import RDCCL


def _models(teacher: str, extra: bool = False) -> dict[str, RDCCL]:
    """RD (Joint RD baseline) and RD+CCL; with extra, the breakdown variants too. One shared teacher state."""
    from ccl.models import RDCCL  # here, so that the memory child imports only ccl.losses

    torch.manual_seed(0)
    configs = {"RD": dict(projector="none", lambda_local=0.0, lambda_global=0.0), "RD+CCL": {}}
    if extra:
        configs["RD+projector, no CL"] = dict(lambda_local=0.0, lambda_global=0.0)
        configs["RD+CCL, 2-mlp projector"] = dict(projector="2-mlp")
    models = {k: RDCCL(teacher=teacher, **kw) for k, kw in configs.items()}
    for m in models.values():
        m.teacher.load_state_dict(models["RD"].teacher.state_dict())
    return models


def _batch(batch: int, size: int, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    return x, x + 0.1 * torch.randn(x.shape, generator=g), torch.arange(batch) % classes


def _train_step(model: RDCCL, opt: torch.optim.Optimizer, x, aug, labels, **kw) -> None:
    opt.zero_grad(set_to_none=True)
    model(x, aug, labels, **kw)["loss"].backward()
    opt.step()


def _report(title: str, times: dict[str, float], goal: float) -> None:
    print(title)
    base = times["RD"]
    for k, t in times.items():
        note = f"  (goal <= {goal}x)" if k == "RD+CCL" else ""
        print(f"    {k:26s} {t * 1e3:8.1f} ms  {t / base:5.2f}x{note}")


def bench_train_and_inference(teacher: str, batch: int, size: int, repeats: int) -> None:
    models = _models(teacher, extra=True)
    x, aug, labels = _batch(batch, size)
    opts = {k: torch.optim.Adam(m.param_groups(1e-3, 5e-3), betas=(0.5, 0.999)) for k, m in models.items()}
    for m in models.values():
        m.train()
    train = interleaved({k: (lambda k=k: _train_step(models[k], opts[k], x, aug, labels)) for k in models}, repeats)
    _report(f"[1] train step (fwd + bwd + Adam), {teacher}, batch {batch}x{size}px, {torch.get_num_threads()} threads, "
            f"median of {repeats}", train, 1.6)
    for m in models.values():
        m.eval()

    def infer(m):
        with torch.no_grad():
            m(x)

    inference = {k: m for k, m in models.items() if k != "RD+projector, no CL"}
    times = interleaved({k: (lambda k=k: infer(inference[k])) for k in inference}, repeats * 2)
    _report(f"[2] inference (forward + anomaly map), batch {batch}x{size}px, median of {repeats * 2}", times, 1.10)
    for k in ("RD+CCL", "RD+CCL, 2-mlp projector"):
        print(f"    {k}: projector = {_projector_share(models[k], size):.1%} of the conv MACs, "
              f"{_n_params(models[k]) / 1e6:.1f} M parameters (RD {_n_params(models['RD']) / 1e6:.1f} M)")


def _n_params(m: RDCCL) -> int:
    return sum(p.numel() for p in m.parameters())


def _projector_share(m: RDCCL, size: int) -> float:
    """Multiply-accumulates of the projector over those of the whole inference graph (conv layers)."""
    macs = {"projector": 0, "all": 0}

    def hook(name):
        def count(mod, inp, out):
            kernel = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
            # Conv2d: every output value sums in/groups x k x k inputs; ConvTranspose2d: every input
            # value is spread over out/groups x k x k outputs.
            n = (out if isinstance(mod, torch.nn.Conv2d) else inp[0]).numel() * kernel
            macs["all"] += n
            macs["projector"] += n if name.startswith("projector.") else 0
        return count

    handles = [mod.register_forward_hook(hook(n)) for n, mod in m.named_modules()
               if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        m.eval()(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return macs["projector"] / macs["all"]


# ----- [3] gather share at 2 ranks -----

def _gather_worker(rank: int, world: int, port: int, teacher: str, batch: int, size: int, steps: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    spent = {"gather": 0.0, "wait": 0.0}
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_to_all")}
    barrier = dist.barrier

    def timed(fn):
        # A barrier first separates waiting for the slower rank (load skew on a shared CPU)
        # from the transfer itself.
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            barrier()
            t1 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent["wait"] += t1 - t0
                spent["gather"] += time.perf_counter() - t1
        return wrapper

    try:
        model = _models(teacher)["RD+CCL"].train()
        ddp = DDP(model)
        opt = torch.optim.Adam(model.param_groups(1e-3, 5e-3), betas=(0.5, 0.999))
        x, aug, labels = _batch(batch, size)
        for _ in range(2):
            _train_step(ddp, opt, x, aug, labels, rank=rank, world_size=world)
        for name, fn in originals.items():  # forward all_gather and its backward all_to_all
            setattr(dist, name, timed(fn))
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            _train_step(ddp, opt, x, aug, labels, rank=rank, world_size=world)
        total = time.perf_counter() - t0
        for name, fn in originals.items():
            setattr(dist, name, fn)
        Path(out, f"rank{rank}.json").write_text(json.dumps({k: v / steps for k, v in dict(spent, step=total).items()}))
        del ddp, model, opt
    finally:
        dist.destroy_process_group()


def bench_gather(teacher: str, batch: int, size: int, steps: int, tmp: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, teacher, batch, size, steps, str(tmp)), nprocs=2, join=True)
    res = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    for r, v in enumerate(res):
        work = v["step"] - v["wait"]
        print(f"[3] DDP rank {r}/2 (gloo, batch {batch}x{size}px, 1 thread): step {v['step'] * 1e3:.0f} ms, of which "
              f"waiting for the other rank {v['wait'] * 1e3:.0f} ms; gather transfer (all_gather fwd + all_to_all bwd) "
              f"{v['gather'] * 1e3:.1f} ms = {v['gather'] / work:.1%} of the step without waiting (goal <= 5%)")


# ----- [4] memory of local CL, full window -----

def _memory_child(chunk: int, batch: int, channels: int, side: int) -> None:
    from ccl.losses import local_contrastive_loss

    torch.manual_seed(0)
    a = torch.randn(batch, channels, side, side, requires_grad=True)
    b = torch.randn(batch, channels, side, side, requires_grad=True)
    labels = torch.arange(batch) % 4
    # Before the baseline: load kernels and thread pools at this size (window 1 is cheap), and the
    # activation-checkpoint machinery, whose first use imports ~150 MiB of modules.
    local_contrastive_loss(a, b, labels, window=1, chunk=chunk).backward()
    tiny = a[:2, :, :4, :4].detach().requires_grad_()
    local_contrastive_loss(tiny, tiny * 2, labels[:2], window="full", chunk=8).backward()
    a.grad = b.grad = None
    base = _reset_peak_rss_kib()
    t0 = time.perf_counter()
    local_contrastive_loss(a, b, labels, window="full", chunk=chunk).backward()
    elapsed = time.perf_counter() - t0
    print(json.dumps({"peak_mib": (_peak_rss_kib() - base) / 1024, "seconds": elapsed}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss_kib() -> int:
    """Reset the peak-RSS mark to the current RSS and return it (KiB).

    ru_maxrss would not do: Linux carries it over fork + exec from the parent.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _peak_rss_kib() -> int:
    return _status_kib("VmHWM")


def bench_memory(batch: int, channels: int, side: int) -> None:
    rows = 2 * batch * side * side
    out = {}
    # A fixed mmap threshold stops glibc from keeping freed blocks in the heap, so peak RSS tracks live tensors.
    for label, chunk in (("unchunked", rows * 2), ("chunked", 512)):
        cmd = [sys.executable, __file__, "--memory-child", str(chunk), str(batch), str(channels), str(side)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="1048576"))
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    u, c = out["unchunked"], out["chunked"]
    print(f"[4] local CL window 'full', B={batch}, C={channels}, {side}x{side} ({rows} anchor rows), fwd+bwd, "
          f"peak RSS growth: unchunked {u['peak_mib']:.0f} MiB ({u['seconds']:.2f} s) | chunk=512 (<= 512x512 similarities a block) "
          f"{c['peak_mib']:.0f} MiB ({c['seconds']:.2f} s) | {u['peak_mib'] / max(c['peak_mib'], 1e-3):.1f}x less")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child(*(int(v) for v in sys.argv[2:6]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is steadiest on a shared machine)")
    p.add_argument("--gather-steps", type=int, default=4)
    p.add_argument("--skip", default="", help="comma list of sections to skip: train,gather,memory")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if "train" not in skip:
        bench_train_and_inference(args.teacher, args.batch, args.size, args.repeats)
    if "gather" not in skip:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bench_gather(args.teacher, args.batch, args.size, args.gather_steps, Path(tmp))
    if "memory" not in skip:
        bench_memory(batch=8, channels=64, side=16)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
