"""RD + CCL on a CUDA machine at the paper's setting, side by side in one run; writes a markdown table.

    python bench/gpu.py [--batches 16,32,64] [--steps 20] [--compile] [--out bench/results]
    python bench/gpu.py --dry-run     # every code path on the CPU at CI size: checks the script, not a measurement

Sections (wide_resnet50_2 without weights, 256 px, classes of 2 samples as in the paper's 8 x 2 batch):
  1. training: samples/s and peak memory of Joint RD and RD + CCL, fp32 and bf16 (autocast, as
     ``train.precision=bf16`` runs under DDP; losses in float32), batch 16 / 32 / 64 on one device, and
     the step-time ratio RD + CCL / Joint RD (goal <= 1.8x). --compile adds RD + CCL rows with the
     student path compiled by inductor (dry run: aot_eager), after checking its first-step losses
     against eager (rel 1e-2).
  2. the parts of one training step at batch 16 (fp32 and bf16): bench/step.py's breakdown, synchronised
     after every part (which a real step is not).
  3. evaluation: the model's inference images/s (forward + anomaly maps) against the evaluator's loop
     (pipelines.evaluation.evaluate.score_shards: device-to-host copy, AnomalyMetrics.update, extremes) on the same
     batches; the metric work must stay <= 25 % of the inference time per batch, else the histogram
     update belongs on the device.
  4. the training loader (pipelines.data.train_data.train_loader) with the node's cores: samples/s of
     augmented 8 x 2 batches from synthetic 256 px shards, workers = cores - 1.
Output: bench/results/gpu-<device>.md (dry run: gpu-dryrun-cpu.md), also printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import cost  # noqa: E402
from ccl.models import RDCCL  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DRY = dict(teacher="resnet18", size=64, batches=(4,), steps=1, warmup=1, eval_batches=2, loader_samples=64)
DRY_NOTE = "DRY RUN on the CPU: the numbers check the script, they measure nothing"


class Bench:
    """The settings of one run and the device helpers every section uses."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        setting = cost.SETTINGS["paper"]
        self.teacher = DRY["teacher"] if self.dry else setting["teacher"]
        self.size = DRY["size"] if self.dry else setting["size"]
        self.batches = DRY["batches"] if self.dry else tuple(int(b) for b in args.batches.split(","))
        self.steps = DRY["steps"] if self.dry else args.steps
        self.warmup = DRY["warmup"] if self.dry else 3
        self.sync = cost.synchronizer(self.device)
        self.clock = time.perf_counter  # wall time: a lent GPU machine runs nothing else

    def autocast(self, precision: str) -> Callable[[], Any]:
        if precision == "fp32":
            return nullcontext
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> str:
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if self.device.type == "cuda" else "-"


# ---------------------------------------------------------------- 1. training throughput


def train_rate(b: Bench, model: RDCCL, batch: int, precision: str) -> dict[str, Any]:
    """Step time, samples/s and peak memory of ``steps`` Adam steps after ``warmup`` ones; or the error."""
    b.reset_memory()
    x, aug, labels = cost.make_batch(batch, b.size, b.device)
    opt = torch.optim.Adam(model.param_groups(1e-3, 5e-3), betas=(0.5, 0.999))
    model.train()
    try:
        for i in range(b.warmup + b.steps):
            if i == b.warmup:
                b.sync()
                t0 = b.clock()
            opt.zero_grad(set_to_none=True)
            with b.autocast(precision)():
                loss = model(x, aug, labels)["loss"]
            loss.backward()
            opt.step()
        b.sync()
        step = (b.clock() - t0) / b.steps
        return {"step": step, "rate": batch / step, "peak": b.peak_gib()}
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        opt.zero_grad(set_to_none=True)
        del opt


def compiled_model(b: Bench, eager: RDCCL) -> RDCCL:
    """A copy of RD + CCL with the student path compiled (inductor; the dry run: aot_eager, as the CPU test),
    its first-step losses checked against eager."""
    import copy

    compiled = copy.deepcopy(eager)
    compiled.compile_student("aot_eager" if b.dry else "inductor")
    x, aug, labels = cost.make_batch(b.batches[0], b.size, b.device)
    with torch.no_grad():
        want, got = eager.train()(x, aug, labels), compiled.train()(x, aug, labels)
    for k in ("kd", "lcl", "gcl"):
        if abs(got[k].item() - want[k].item()) > 1e-2 * abs(want[k].item()):
            raise RuntimeError(f"compiled {k} {got[k].item()} differs from eager {want[k].item()}")
    return compiled


def section_train(b: Bench, models: dict[str, RDCCL], compile_too: bool) -> list[str]:
    if compile_too:
        models = {**models, "RD+CCL compiled": compiled_model(b, models["RD+CCL"])}
    lines = ["## 1. Training throughput (one device)", "",
             cost.row(["model", "precision", "batch", "samples/s", "step ms", "peak GiB", "step x Joint RD"]),
             cost.row(["---"] * 3 + ["---:"] * 4)]
    for precision in PRECISIONS:
        for batch in b.batches:
            base = None
            for name, model in models.items():
                r = train_rate(b, model, batch, precision)
                if "error" in r:
                    lines.append(cost.row([name, precision, str(batch), r["error"], "", "", ""]))
                    continue
                base = r["step"] if name == "RD" else base
                ratio = f"{r['step'] / base:.2f}x" if base else "-"
                lines.append(cost.row([name, precision, str(batch), f"{r['rate']:.1f}", cost.ms(r["step"]),
                                       r["peak"], ratio]))
                print(lines[-1], flush=True)
    return lines + ["", "Goal: RD+CCL step <= 1.8x Joint RD's (see bench/step.py for the conv-MAC floor)."]


# ---------------------------------------------------------------- 2. breakdown


def section_breakdown(b: Bench, models: dict[str, RDCCL]) -> list[str]:
    lines = [f"## 2. Parts of a training step (batch {b.batches[0]}, synchronised after each part)", ""]
    data = cost.make_batch(b.batches[0], b.size, b.device)
    for precision in PRECISIONS:
        repeats = 1 if b.dry else max(3, b.steps // 4)
        times = cost.train_step_times(models, data, repeats, b.warmup, b.sync, b.clock, b.autocast(precision))
        lines += [f"### {precision}", ""] + cost.parts_table(times["Joint RD"], times["RD+CCL"]) + [""]
        lines += cost.ladder_table(times, cost.mac_floor(models, b.size, b.device)) + [""]
    return lines


# ---------------------------------------------------------------- 3. evaluation


def eval_batches(b: Bench, n: int, batch: int) -> list[Any]:
    """Batches of the evaluation loader (pipelines.data.exact_reader.ExactBatch): half the images carry a mask."""
    import cv2

    from pipelines.data.exact_reader import ExactBatch

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        masks = np.zeros((batch, b.size, b.size), np.uint8)
        for j in range(0, batch, 2):
            cv2.circle(masks[j], (int(rng.integers(0, b.size)), int(rng.integers(0, b.size))), b.size // 12, 1, -1)
        keys = [f"bench/g{j % 4}/test/x/{i}_{j}" for j in range(batch)]
        images = torch.from_numpy(rng.integers(0, 256, (batch, 3, b.size, b.size), dtype=np.uint8))
        out.append(ExactBatch(images=images, masks=torch.from_numpy(masks.astype(bool)),
                              has_mask=torch.ones(batch, dtype=torch.bool),
                              labels=torch.from_numpy((masks.reshape(batch, -1).max(1) > 0).astype(np.int64)),
                              classes=torch.zeros(batch, dtype=torch.long),
                              groups=[f"bench/g{j % 4}" for j in range(batch)], keys=keys))
    return out


def section_eval(b: Bench, model: RDCCL, batch: int, n: int) -> list[str]:
    from ccl.data.transforms import normalize_batch
    from ccl.metrics import AnomalyMetrics
    from pipelines.base.config import EvalConfig
    from pipelines.evaluation.evaluate import score_shards, torch_scorer
    from pipelines.evaluation.extremes import Extremes

    batches = eval_batches(b, n, batch)
    model.eval()
    lines = ["## 3. Evaluation: inference against the evaluator's metric work", "",
             cost.row(["precision", "batch", "inference img/s", "evaluator loop img/s", "metric work ms/batch",
                       "metric / inference", "goal"]), cost.row(["---"] * 2 + ["---:"] * 5)]
    for precision in PRECISIONS:
        context = b.autocast(precision)

        def inference_only(context=context) -> None:
            with torch.no_grad(), context():
                for item in batches:
                    model(normalize_batch(item.images.to(b.device)))
            b.sync()

        def evaluator(context=context) -> None:
            metrics = AnomalyMetrics(bins=EvalConfig().bins)
            with torch.no_grad(), context():
                score_shards(torch_scorer(model, b.device), batches, metrics, Extremes(EvalConfig().vis), None)

        inference_only()  # warm-up
        times = {"inference": [], "evaluator": []}
        for _ in range(max(2, b.steps // 5)):
            for name, fn in (("inference", inference_only), ("evaluator", evaluator)):
                t0 = b.clock()
                fn()
                times[name].append(b.clock() - t0)
        infer, loop = (statistics.median(times[k]) for k in ("inference", "evaluator"))
        metric = max(loop - infer, 0.0) / n
        share = metric / (infer / n)
        lines.append(cost.row([precision, str(batch), f"{batch * n / infer:.1f}", f"{batch * n / loop:.1f}",
                               cost.ms(metric), f"{share:.0%}", "met (<= 25%)" if share <= 0.25 else "NOT met"]))
        print(lines[-1], flush=True)
    return lines + ["", "Metric work = the evaluator's loop minus the inference alone: copy to the host, "
                        "AnomalyMetrics.update (histograms, regions) and the extremes for the heatmaps."]


# ---------------------------------------------------------------- 4. loader


def section_loader(b: Bench, samples: int) -> list[str]:
    from bench.loader import write_build  # synthetic 16-class shards
    from pipelines.base.config import load_config
    from pipelines.data.labels import load_labels
    from pipelines.data.train_data import train_loader
    from shard_format.builds import open_builds

    workers = 1 if b.dry else max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        build = write_build(Path(tmp) / "px256", 256, samples)
        cfg = load_config(None, [f"data.shards=[{build}]", "data.batch_size=16", "data.classes_per_batch=8",
                                 f"data.num_workers={workers}", "data.image_size=256", "data.shuffle_buffer=64"])
        shard_set = open_builds([str(build)])
        labels = load_labels(shard_set, "raw")
        loader = train_loader(cfg, shard_set, labels, 0, 1, 0, pin_memory=b.device.type == "cuda")
        t0, n = time.perf_counter(), 0
        for batch in loader:
            batch["image"].to(b.device, non_blocking=True), batch["augmented"].to(b.device, non_blocking=True)
            n += batch["image"].shape[0]
        rate = n / (time.perf_counter() - t0)
    return ["## 4. Training loader", "",
            f"{rate:.0f} samples/s with {workers} workers ({os.cpu_count()} cores; {n} samples of 256 px PNG shards, "
            "anchor + augmented view, 8 x 2 batches, to the device; includes the workers' start-up)."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, CI size: runs every code path, measures nothing")
    p.add_argument("--batches", default="16,32,64")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--loader-samples", type=int, default=2048)
    p.add_argument("--compile", action="store_true", help="add RD + CCL rows compiled with inductor")
    p.add_argument("--skip", default="", help="comma list of sections to skip: train,breakdown,eval,loader")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device; --dry-run runs its code paths on the CPU")
    skip = set(filter(None, args.skip.split(",")))
    b = Bench(args)
    name = "dryrun-cpu" if b.dry else torch.cuda.get_device_name().replace(" ", "-")
    models = cost.build_models(b.teacher, b.device)
    t0 = time.perf_counter()
    lines = [f"# RD + CCL on {name}", "",
             f"{b.teacher}, {b.size} px, pretrained none, torch {torch.__version__}, "
             f"{DRY_NOTE if b.dry else 'wall time'}.", ""]
    if "train" not in skip:
        lines += section_train(b, models, args.compile) + [""]
    if "breakdown" not in skip:
        lines += section_breakdown(b, models) + [""]
    if "eval" not in skip:
        batch, n = (b.batches[0], DRY["eval_batches"]) if b.dry else (args.eval_batch, args.eval_batches)
        lines += section_eval(b, models["RD+CCL"], batch, n) + [""]
    if "loader" not in skip:
        lines += section_loader(b, DRY["loader_samples"] if b.dry else args.loader_samples) + [""]
    lines.append(f"Total {time.perf_counter() - t0:.0f} s.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
