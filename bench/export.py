"""Deployed inference on one CPU core: torch eager vs ONNX Runtime vs OpenVINO, side by side in one run.

For each model: the export time of each format (launch/export.py's path: the graph written, then
checked against torch), then images/s at batch 1 and 16 of the same uint8 -> (map, score) graph
run by torch eager (1 thread), ONNX Runtime and OpenVINO (1 intra-op thread each, float32), the
process pinned to one core. The candidates alternate call by call so that load drifts on a shared
machine hit all of them alike; medians are printed. Goal: best runtime >= 1.5x torch eager at batch 1.

Models (random trainable weights; speed does not depend on them):
    demo    RD + CCL on the offline MobileNetV2 at 128 px (configs/demo.yaml's model)
    paper   RD + CCL on wide_resnet50_2 at 256 px with the 4-conv-block projector (random teacher)

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/export.py [--models demo,paper] [--repeats 3] [--core 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.timing import interleaved  # noqa: E402

MODELS = {
    "demo": ["model.teacher=mobilenetv2_100", "model.pretrained=offline", "data.image_size=128"],
    "paper": ["model.teacher=wide_resnet50_2", "model.pretrained=none", "data.image_size=256"],
}
BATCHES = (1, 16)
RUNTIMES = ("torch eager", "onnxruntime", "openvino")


def bench_model(name: str, repeats: int, work: Path) -> None:
    from ccl.models.inference_graph import InferenceGraph
    from pipelines.base.config import load_config
    from pipelines.base.model import build_model, save_export
    from pipelines.deploy.export import export_model
    from pipelines.deploy.runtime import load_deployed

    cfg = load_config(None, MODELS[name])
    model = build_model(cfg).eval()
    export = save_export(model, cfg, work / name / "export", {"step": 0})
    size = cfg.data.image_size
    print(f"\n{name}: {cfg.model.teacher} at {size} px, projector {cfg.model.projector}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    runners: dict[str, Callable[[np.ndarray], object]] = {"torch eager": InferenceGraph(model, "uint8").run_numpy}
    for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        started = time.perf_counter()
        info = export_model(export, fmt, work / name / fmt)
        total = time.perf_counter() - started
        print(f"  export {fmt:9s} {info['exporter']['seconds']:6.1f} s to write, {total:6.1f} s with the parity check "
              f"(map difference {info['parity']['max_map_difference_relative']:.1e} of the range)")
        runners[runtime] = load_deployed(work / name / fmt / info["model_file"], threads=1)
    print(f"  {'batch':>5s} " + " ".join(f"{r:>22s}" for r in RUNTIMES))
    ratios: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        calls = {k: (lambda run=run, images=images: run(images)) for k, run in runners.items()}
        seconds = interleaved(calls, repeats, warmup=1)
        ratios[batch] = {r: seconds["torch eager"] / seconds[r] for r in RUNTIMES}
        cells = [f"{batch / seconds[r]:8.2f} img/s {ratios[batch][r]:5.2f}x" for r in RUNTIMES]
        print(f"  {batch:5d} " + " ".join(f"{c:>22s}" for c in cells))
    best = max(RUNTIMES[1:], key=lambda r: ratios[1][r])
    verdict = "met" if ratios[1][best] >= 1.5 else "NOT met"
    print(f"  batch 1: best runtime {best}, {ratios[1][best]:.2f}x torch eager (goal >= 1.5x: {verdict})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,paper", help=f"comma list of {sorted(MODELS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--core", type=int, default=0, help="the CPU core the process is pinned to")
    args = p.parse_args()
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    import onnxruntime
    import openvino

    print(f"one core (#{args.core}), 1 thread each; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"openvino {openvino.__version__}; medians of {args.repeats} interleaved calls; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bench_model(name.strip(), args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
