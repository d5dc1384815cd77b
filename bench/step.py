"""Cost of CCL on top of RD, measured side by side in one run (CPU).

Prints:
  1. train step (forward + backward + Adam): Joint RD (no projector, lambdas 0) against RD + CCL, every
     part of the step (teacher, projector, neck per view, decoder, KD, local CL per scale, global CL, rest
     of the forward, backward, optimizer) and the ladder RD + projector -> + global CL -> + local CL ->
     RD + CCL, with the conv-MAC ratio of each (the floor the time ratio cannot beat); goal <= 1.8x
  2. inference (forward + anomaly map): RD vs RD + CCL (goal <= 1 + the projector's share of the MACs)
  3. share of an RD + CCL DDP step spent in the cross-rank gathers at 2 gloo ranks (goal <= 5%)
  4. peak memory of local CL, window "full", chunked vs unchunked (forward + backward, fresh subprocesses)

Times of [1] and [2] are the process's CPU time (one intra-op thread by default): on a shared machine
wall time would also count the time slices of other jobs. Candidates alternate, medians are reported.

Settings: --setting small (resnet18, 128 px, batch 8; all four sections) or paper (wide_resnet50_2,
256 px, batch 16 = 8 classes x 2; sections 1-2 by default); --teacher / --size / --batch override.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/step.py [--setting small|paper] [--repeats 3] [--skip gather,memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.timing import interleaved_parts, timed  # noqa: E402
from pipelines.experiments.jobs import free_port  # noqa: E402

if TYPE_CHECKING:
    from ccl.models import RDCCL

def _train_step(model: RDCCL, opt: torch.optim.Optimizer, x, aug, labels, **kw) -> None:
    opt.zero_grad(set_to_none=True)
    model(x, aug, labels, **kw)["loss"].backward()
    opt.step()


def bench_train(teacher: str, batch: int, size: int, repeats: int, warmup: int) -> None:
    """[1] Joint RD vs the RD + CCL ladder, each step broken into its parts, and the conv-MAC floor."""
    from bench import cost

    models = cost.build_models(teacher)
    x, aug, _ = data = cost.make_batch(batch, size)
    teacher_model, both = models["RD+CCL"].teacher, torch.cat([x, aug])
    extra = {"teacher, one view": timed(lambda: teacher_model(x), clock=time.process_time),
             "teacher, both views in one call": timed(lambda: teacher_model(both), clock=time.process_time)}
    times = cost.train_step_times(models, data, repeats, warmup, extra=extra)
    print(f"[1] train step (forward + backward + Adam), {teacher}, batch {batch} x {size} px, "
          f"{torch.get_num_threads()} thread(s), process CPU time, median of {repeats}\n")
    print("\n".join(cost.parts_table(times["Joint RD"], times["RD+CCL"])))
    print(f"\n    teacher, one view {cost.ms(times['teacher, one view']['total'])} ms; both views in one call "
          f"{cost.ms(times['teacher, both views in one call']['total'])} ms\n")
    print("\n".join(cost.ladder_table(times, cost.mac_floor(models, size))) + "\n")


def bench_inference(teacher: str, batch: int, size: int, repeats: int, warmup: int) -> None:
    """[2] inference RD vs RD + CCL; the goal is 1 + the projector's share of the conv MACs."""
    from bench import cost

    models = {k: m.eval() for k, m in cost.build_models(teacher).items()}
    x, _, _ = cost.make_batch(batch, size)

    def infer(m: RDCCL) -> None:
        with torch.no_grad():
            m(x)

    times = interleaved_parts({k: timed(lambda m=m: infer(m), clock=time.process_time) for k, m in models.items()},
                              repeats * 2, warmup)
    with torch.no_grad():
        macs = cost.conv_macs(models["RD+CCL"], lambda: models["RD+CCL"](x[:1]))
    share = macs["projector"] / macs["forward"]
    ratio = times["RD+CCL"]["total"] / times["RD"]["total"]
    print(f"[2] inference (forward + anomaly map), batch {batch} x {size} px, process CPU time, "
          f"median of {repeats * 2}: "
          f"RD {cost.ms(times['RD']['total'])} ms, RD+CCL {cost.ms(times['RD+CCL']['total'])} ms = {ratio:.2f}x "
          f"(goal <= 1 + projector share = {1 + share:.2f}x; projector {share:.1%} of the conv MACs, "
          f"{cost.n_params(models['RD+CCL']) / 1e6:.1f} M parameters vs RD {cost.n_params(models['RD']) / 1e6:.1f} M)")


# ----- [3] gather share at 2 ranks -----

def _gather_worker(rank: int, world: int, port: int, teacher: str, batch: int, size: int, steps: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from bench import cost

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
        model = cost.build_models(teacher)["RD+CCL"].train()
        ddp = DDP(model)
        opt = torch.optim.Adam(model.param_groups(1e-3, 5e-3), betas=(0.5, 0.999))
        x, aug, labels = cost.make_batch(batch, size)
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

    mp.spawn(_gather_worker, args=(2, free_port(), teacher, batch, size, steps, str(tmp)), nprocs=2, join=True)
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
        env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="1048576")
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    u, c = out["unchunked"], out["chunked"]
    print(f"[4] local CL window 'full', B={batch}, C={channels}, {side}x{side} ({rows} anchor rows), fwd+bwd, "
          f"peak RSS growth: unchunked {u['peak_mib']:.0f} MiB ({u['seconds']:.2f} s) | "
          f"chunk=512 (<= 512x512 similarities a block) "
          f"{c['peak_mib']:.0f} MiB ({c['seconds']:.2f} s) | {u['peak_mib'] / max(c['peak_mib'], 1e-3):.1f}x less")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child(*(int(v) for v in sys.argv[2:6]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=("small", "paper"), default="small")
    p.add_argument("--teacher", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is steadiest on a shared machine)")
    p.add_argument("--gather-steps", type=int, default=4)
    p.add_argument("--skip", default=None, help="comma list of sections to skip: train,inference,gather,memory "
                   "(default: none for small, gather,memory for paper)")
    args = p.parse_args()
    from bench import cost

    setting = dict(cost.SETTINGS[args.setting])
    setting.update({k: v for k, v in (("teacher", args.teacher), ("batch", args.batch), ("size", args.size)) if v})
    teacher, batch, size = setting["teacher"], setting["batch"], setting["size"]
    skip = args.skip if args.skip is not None else ("gather,memory" if args.setting == "paper" else "")
    skip = set(filter(None, skip.split(",")))
    torch.set_num_threads(args.threads)
    print(f"setting {args.setting}: {teacher}, {size} px, batch {batch}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores at start\n")
    t0 = time.perf_counter()
    if "train" not in skip:
        bench_train(teacher, batch, size, args.repeats, args.warmup)
    if "inference" not in skip:
        bench_inference(teacher, batch, size, args.repeats, args.warmup)
    if "gather" not in skip:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bench_gather(teacher, batch, size, args.gather_steps, Path(tmp))
    if "memory" not in skip:
        bench_memory(batch=8, channels=64, side=16)
    print(f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
