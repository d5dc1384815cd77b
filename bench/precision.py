"""Deployed inference per precision: fp32 vs fp16 vs INT8, ONNX Runtime and OpenVINO, side by side in one run.

For each model: every (runtime, precision) export written by launch/export.py's path (INT8 calibrated on
normal training images of --calibration), then per-image latency at batch 1 (p50 / p99 over --calls calls)
and images/s at batch 16, on one core (the process pinned, 1 runtime thread) and on all cores (the runtimes'
own thread choice). The candidates alternate call by call so that load drifts hit all of them alike.
Goal (issue 24): INT8 >= 2x fp32 per image on CPU, and ahead of anomalib's fp32 OpenVINO model: with
--anomalib (its export by ``bench/anomalib_rd.py``, made in anomalib's own environment), that graph runs beside
the paper model's in the same alternation, fed the same images (uint8 -> its float [0, 1] NCHW input).

Models (random trainable weights and, for the paper model, a random teacher; speed does not depend on them):
    demo    RD + CCL on the offline MobileNetV2 at 128 px (configs/demo.yaml's model)
    paper   RD + CCL on wide_resnet50_2 at 256 px with the 4-conv-block projector

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/precision.py --calibration runs/demo/shards/demo
           [--models demo,paper] [--calls 30] [--anomalib runs/bench/anomalib_rd/weights/openvino/model.xml]
           [--out bench/results/precision-<cpu>.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MODELS = {
    "demo": ["model.teacher=mobilenetv2_100", "model.pretrained=offline", "data.image_size=128"],
    "paper": ["model.teacher=wide_resnet50_2", "model.pretrained=none", "data.image_size=256"],
}
CANDIDATES = [(fmt, precision) for fmt in ("onnx", "openvino") for precision in ("fp32", "fp16", "int8")]
BATCH = 16
ANOMALIB = ("anomalib 2.7.0 openvino", "fp32")


def anomalib_model(path: Path, threads: int | None) -> Callable[[np.ndarray], object]:
    """anomalib's OpenVINO export compiled as the project's runtime compiles its own (threads, f32 inference);
    called on the same uint8 (B, S, S, 3) batches, converted to its float [0, 1] (B, 3, S, S) input."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda images: request.infer(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32) / 255)


def write_exports(name: str, calibration: str, work: Path) -> dict[tuple[str, str], Path]:
    from pipelines.base.config import load_config
    from pipelines.base.model import build_model, save_export
    from pipelines.deploy.export import export_model

    cfg = load_config(None, MODELS[name])
    export = save_export(build_model(cfg).eval(), cfg, work / name / "export", {"step": 0})
    paths = {}
    for fmt, precision in CANDIDATES:
        started = time.perf_counter()
        info = export_model(export, fmt, work / name / f"{fmt}-{precision}", precision=precision,
                            calibration_shards=[calibration])
        paths[fmt, precision] = work / name / f"{fmt}-{precision}" / info["model_file"]
        size = sum(f.stat().st_size for f in paths[fmt, precision].parent.iterdir() if f.name != "info.json")
        print(f"  export {fmt:8s} {precision}: {time.perf_counter() - started:6.1f} s, {size / 1e6:7.1f} MB, "
              f"map difference to torch {info['parity']['max_map_difference_relative']:.1e} of the range", flush=True)
    return paths


def call_times(calls: dict[str, Callable[[], object]], n: int) -> dict[str, list[float]]:
    """Seconds of ``n`` calls of each candidate, the candidates alternating (one warm-up call each)."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(n):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def measure(paths: dict[tuple[str, str], Path], size: int, threads: int | None, n: int,
            anomalib: Path | None = None) -> list[str]:
    from pipelines.deploy.runtime import load_deployed

    models = {key: load_deployed(path, threads=threads) for key, path in paths.items()}
    if anomalib is not None:
        models[ANOMALIB] = anomalib_model(anomalib, threads)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    single = call_times({key: (lambda m=m: m(one)) for key, m in models.items()}, n)
    batched = call_times({key: (lambda m=m: m(batch)) for key, m in models.items()}, max(3, n // 5))
    rows = []
    for fmt, precision in models:
        base = np.median(single[fmt, "fp32"])
        p50, p99 = np.median(single[fmt, precision]), np.percentile(single[fmt, precision], 99)
        rate = BATCH / np.median(batched[fmt, precision])
        peer = f" {np.median(single[ANOMALIB]) / p50:.2f}x |" if anomalib is not None else ""
        rows.append(f"| {fmt} | {precision} | {1e3 * p50:.1f} | {1e3 * p99:.1f} | {rate:.1f} | "
                    f"{base / p50:.2f}x |{peer}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibration", required=True, help="shard build whose normal training images calibrate INT8")
    p.add_argument("--models", default="demo,paper", help=f"comma list of {sorted(MODELS)}")
    p.add_argument("--calls", type=int, default=30, help="batch-1 calls per candidate (p99 needs many)")
    p.add_argument("--anomalib", type=Path, help="anomalib's OpenVINO model.xml (bench/anomalib_rd.py), timed beside "
                   "the paper model")
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args()
    import onnxruntime
    import openvino

    cores = os.cpu_count()
    lines = [f"# Deployed inference per precision ({platform.processor() or platform.machine()}, {cores} cores)", "",
             f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}; OpenVINO CPU capabilities "
             f"{openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}; load average "
             f"{os.getloadavg()[0]:.1f} at start; `python bench/precision.py {' '.join(sys.argv[1:])}`"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            from pipelines.base.config import load_config

            size = load_config(None, MODELS[name]).data.image_size
            print(f"\n{name} ({' '.join(MODELS[name])})", flush=True)
            paths = write_exports(name, args.calibration, Path(tmp))
            for label, threads in (("one core, 1 thread", 1), (f"all {cores} cores", None)):
                if threads == 1:
                    os.sched_setaffinity(0, {0})
                else:
                    os.sched_setaffinity(0, set(range(cores)))
                peer = args.anomalib if name == "paper" else None
                lines += ["", f"## {name}, {label}", "",
                          "| runtime | precision | latency p50 ms | latency p99 ms | images/s at batch 16 | "
                          "batch-1 speed vs fp32 |" + (" vs anomalib's OpenVINO fp32 |" if peer else ""),
                          "|---|---|---:|---:|---:|---:|" + ("---:|" if peer else "")]
                rows = measure(paths, size, threads, args.calls, peer)
                lines += rows
                print("\n".join(lines[-(len(rows) + 4):]), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
