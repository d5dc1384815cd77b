"""A training export (``RUN/export``) -> one deployable graph with its info.json.

    info = export_model("runs/mvtec/export", "onnx", "deploy/mvtec")   # deploy/mvtec/model.onnx + info.json

The graph is ``ccl.models.inference_graph.InferenceGraph``: a uint8 RGB (or normalised) batch in,
(anomaly map, image score) out, the Gaussian smoothing included. ONNX comes from torch.export
(``torch.onnx.export(dynamo=True)``); OpenVINO IR is converted from that ONNX graph (OpenVINO's
PyTorch frontend has no cosine similarity); TorchScript is a trace. ``precision`` fp16 or int8 turns the
fp32 file into a reduced-precision one (``pipelines.deploy.precision``; INT8 calibrated on normal training
images, ``pipelines.deploy.calibration``); info.json records the precision and the calibration set.

info.json lists the sha256 of every model file written (``files``; the runtime refuses a file that
differs). Before anything replaces ``out``, the written file is run by its runtime on a fixed batch and
compared with the torch model: a map further from it than the precision's tolerance (fp32: 1e-4 of the
map range) fails the export.
The directory is written under a temporary name and swapped in, so a reader never sees half an
export; an existing ``out`` that is not a deploy export is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccl.data.image_ops import IMAGENET_MEAN, IMAGENET_STD, normalize_array
from ccl.models.inference_graph import INPUT_KINDS, InferenceGraph
from pipelines.base.config import Config, to_dict
from pipelines.base.exits import InputError
from pipelines.base.model import INFO_NAME, load_export, read_info
from pipelines.deploy.calibration import image_shards, read_calibration_images, refuse_conditioned
from pipelines.deploy.precision import (
    PARITY_MIN_CORRELATION,
    PARITY_TOLERANCE,
    check_precision,
    onnx_to_fp16,
    openvino_model,
    quantize_onnx,
)
from pipelines.deploy.runtime import (
    DEPLOY_VERSION,
    FORMATS,
    INPUT_NAME,
    JIT_DEPRECATION,
    MODEL_FILES,
    OUTPUT_NAMES,
    DeployError,
    file_sha256,
    load_deployed,
)
from pipelines.training.checkpoint import check_replaceable, replace_dir


def config_hash(cfg: Config) -> str:
    """sha256 of the resolved training config (canonical JSON), to tell which training a graph came from."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def parse_batch(batch: str | int) -> int | None:
    """``"dynamic"`` -> None, else a positive batch size."""
    if batch == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return n


def example_input(input_kind: str, n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of random images in the graph's input form (for tracing and the parity check)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return torch.from_numpy(images if input_kind == "uint8" else normalize_array(images))


# ---------------------------------------------------------------- writers: graph -> files in a directory


def _onnx_file(graph: InferenceGraph, example: torch.Tensor, out: Path, dynamic: bool, name: str) -> Path:
    path = out / name
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")  # anomaly_map bypasses its caches when tracing
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)
    return path


def _write_onnx(graph: InferenceGraph, example: torch.Tensor, out: Path, dynamic: bool, precision: str,
                calibration: np.ndarray | None) -> Path:
    path = _onnx_file(graph, example, out, dynamic, FORMATS["onnx"])
    if precision == "fp16":
        onnx_to_fp16(path)
    elif precision == "int8":
        quantize_onnx(path, calibration, None if dynamic else len(example))
    return path


def _write_openvino(graph: InferenceGraph, example: torch.Tensor, out: Path, dynamic: bool, precision: str,
                    calibration: np.ndarray | None) -> Path:
    import openvino as ov

    onnx_path = _onnx_file(graph, example, out, dynamic, "intermediate.onnx")
    model, fp16_weights = openvino_model(onnx_path, precision, calibration, None if dynamic else len(example))
    path = out / FORMATS["openvino"]
    ov.save_model(model, str(path), compress_to_fp16=fp16_weights)  # fp32 and int8 keep their float weights exact
    onnx_path.unlink()
    return path


def _write_torchscript(graph: InferenceGraph, example: torch.Tensor, out: Path, dynamic: bool, precision: str,
                       calibration: np.ndarray | None) -> Path:
    path = out / FORMATS["torchscript"]
    with warnings.catch_warnings():
        # The image size is fixed in an export: the tracer may record it as a constant.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


WRITERS = {"onnx": _write_onnx, "openvino": _write_openvino, "torchscript": _write_torchscript}


# ---------------------------------------------------------------- the export


def export_model(checkpoint: str | Path, fmt: str, out_dir: str | Path, image_size: int | None = None,
                 batch: str | int = "dynamic", input_kind: str = "uint8", precision: str = "fp32",
                 calibration_shards: Sequence[str] = (), calibration_images: int = 64) -> dict[str, Any]:
    """Write ``out_dir/model.{onnx,xml,pt}`` and ``out_dir/info.json``; returns the info. INT8 is calibrated on
    ``calibration_images`` normal training images of ``calibration_shards`` (default: the training's shards)."""
    if fmt not in WRITERS:
        raise InputError(f"--format must be one of {sorted(WRITERS)}, got {fmt!r}")
    check_precision(fmt, precision)
    if input_kind not in INPUT_KINDS:
        raise InputError(f"--input must be one of {INPUT_KINDS}, got {input_kind!r}")
    fixed = parse_batch(batch)
    out = Path(out_dir)
    # only an earlier deploy export (or nothing) may be replaced: never a training export or other files
    check_replaceable(out, Path(checkpoint), "deploy_version", "an export of launch/export.py")
    try:
        model, cfg = load_export(checkpoint)
    except RuntimeError as err:  # weights that do not fit the config: another version of the model code
        raise InputError(f"{Path(checkpoint)}: the weights do not fit its config.yaml ({err})") from None
    refuse_conditioned(model, checkpoint)
    size = int(image_size or cfg.data.image_size)
    graph = InferenceGraph(model, input_kind)
    _check_size(graph, size)
    calibration, calibrated = None, None
    if precision == "int8":  # read before anything is written: a build that cannot be read fails here
        shard_set = image_shards(cfg, calibration_shards, checkpoint, "--calibration-shards")
        calibration, calibrated = read_calibration_images(shard_set, calibration_images, size)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        path = WRITERS[fmt](graph, example_input(input_kind, fixed or 2, size), tmp, fixed is None, precision,
                            calibration)
        seconds = time.perf_counter() - started
        info = deploy_info(cfg, read_info(checkpoint), fmt, size, fixed, input_kind, Path(checkpoint), seconds)
        info.update(precision=precision, calibration=calibrated)
        info["files"] = {name: file_sha256(tmp / name) for name in MODEL_FILES[fmt]}  # checked by every load
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2))
        info["parity"] = check_parity(graph, path, fixed or 2, size, precision, calibration)
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return info


def _check_size(graph: InferenceGraph, size: int) -> None:
    """The model runs at ``size`` (the neck halves the teacher's coarsest scale once more), checked eagerly."""
    try:
        with torch.no_grad():
            InferenceGraph(graph.model, "uint8")(example_input("uint8", 1, size))
    except RuntimeError as err:
        step = 2 * max(graph.model.teacher.reductions)
        raise InputError(f"--image-size {size}: the model does not run at this size (use a multiple of {step}): "
                         f"{str(err).splitlines()[0]}") from None


def deploy_info(cfg: Config, trained: dict[str, Any], fmt: str, size: int, batch: int | None, input_kind: str,
                checkpoint: Path, seconds: float) -> dict[str, Any]:
    """Everything a line PC needs to run and trust the graph, beside it as info.json."""
    threshold, source = trained.get("image_threshold"), trained.get("image_threshold_source")
    if size != cfg.data.image_size and threshold is not None:  # scores at another size are on another scale
        threshold, source = None, (f"not carried over: evaluated at {cfg.data.image_size} px, "
                                   f"this graph runs at {size} px")
    layout = "NHWC" if input_kind == "uint8" else "NCHW"
    return {
        "deploy_version": DEPLOY_VERSION,
        "format": fmt,
        "model_file": FORMATS[fmt],
        "image_size": size,
        "batch": "dynamic" if batch is None else batch,
        "input": {"name": INPUT_NAME, "kind": input_kind, "layout": layout,
                  "dtype": input_kind.replace("float", "float32"),
                  "shape": ["batch" if batch is None else batch]
                  + ([size, size, 3] if layout == "NHWC" else [3, size, size])},
        "outputs": {"anomaly_map": ["batch", size, size], "score": ["batch"]},
        "preprocessing": {
            "color": "RGB",
            "resize": f"{size}x{size}, aspect not kept; OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging",
            "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "normalization": "inside the graph" if input_kind == "uint8" else "by the caller: (x / 255 - mean) / std",
        },
        "postprocessing": {"anomaly_map": f"sum over scales of 1 - cos, Gaussian blur sigma {cfg.eval.sigma}",
                           "score": "max of the anomaly map", "decision": "anomalous if score >= image_threshold"},
        "image_threshold": threshold,
        "image_threshold_source": source,
        "teacher": {"name": cfg.model.teacher, "pretrained": cfg.model.pretrained,
                    "out_indices": list(cfg.model.out_indices)},
        "projector": cfg.model.projector,
        "trained_image_size": cfg.data.image_size,
        "classes": sorted(trained.get("class_index", {})),
        "datasets": trained.get("datasets", []),
        "training": {"config_sha256": config_hash(cfg), "step": trained.get("step"), "epoch": trained.get("epoch"),
                     "weights": trained.get("weights"), "checkpoint": str(checkpoint),
                     "qat": trained.get("qat")},  # fine-tuned for INT8 (launch/qat.py), or None
        "exporter": {"torch": torch.__version__, "seconds": round(seconds, 2), **_runtime_versions(fmt)},
    }


def _runtime_versions(fmt: str) -> dict[str, str]:
    module = {"onnx": "onnx", "openvino": "openvino"}.get(fmt)
    return {module: __import__(module).__version__} if module else {}


def map_correlation(maps: np.ndarray, reference: np.ndarray) -> float:
    """Mean over images of the Pearson correlation of two (B, S, S) map stacks (a flat map counts as 0)."""
    values = []
    for got, want in zip(maps.reshape(len(maps), -1), reference.reshape(len(reference), -1), strict=True):
        flat = got.std() == 0 or want.std() == 0
        values.append(0.0 if flat else float(np.corrcoef(got, want)[0, 1]))
    return float(np.mean(values))


def check_parity(graph: InferenceGraph, path: Path, n: int, size: int, precision: str = "fp32",
                 calibration: np.ndarray | None = None) -> dict[str, Any]:
    """Run the written file with its runtime on a fixed uint8 batch and compare with the torch graph: random
    images, or for INT8 the calibration images (the ranges it was quantized for; random pixels lie outside)."""
    uint8 = InferenceGraph(graph.model, "uint8")
    images = torch.from_numpy(calibration[:max(n, 8)]) if calibration is not None else example_input("uint8", n, size,
                                                                                                     seed=1)
    n = len(images)
    with torch.no_grad():
        want_maps, want_scores = (t.numpy() for t in uint8(images))
    maps, scores = load_deployed(path, trust_torchscript=True)(images.numpy())  # the file written just now
    span = float(want_maps.max() - want_maps.min()) or 1.0
    worst = float(np.abs(maps - want_maps).max()) / span
    correlation = map_correlation(maps, want_maps)
    if precision in PARITY_MIN_CORRELATION:
        bound = PARITY_MIN_CORRELATION[precision]
        if not correlation >= bound:
            raise DeployError(f"{path}: the exported {precision} graph's maps correlate with the torch model's by "
                              f"{correlation:.2f} on its calibration images (at least {bound:g} expected); the "
                              f"export was not written")
    elif not worst <= PARITY_TOLERANCE[precision]:
        raise DeployError(f"{path}: the exported {precision} graph's maps differ from the torch model's by {worst:.2e} "
                          f"of the map range (tolerance {PARITY_TOLERANCE[precision]:g}); the export was not written")
    return {"images": n, "max_map_difference_relative": worst, "map_correlation": correlation,
            "max_score_difference": float(np.abs(scores - want_scores).max())}
