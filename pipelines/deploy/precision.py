"""Reduced-precision exports: an fp32 graph file -> fp16 or INT8, in place, for its runtime.

    check_precision("onnx", "int8")                      # InputError (one line) where a format lacks it
    onnx_to_fp16(path)                                   # weights and activations in float16, uint8 in / float32 out
    quantize_onnx(path, calibration, batch)              # ONNX Runtime static INT8 (QDQ), per-channel weights
    model = openvino_model(onnx_path, "int8", calibration, batch)  # NNCF post-training INT8, then ov.save_model

INT8 is post-training quantization (ONNX Runtime's static QDQ with per-channel weights; NNCF's default
preset for OpenVINO) calibrated on normal training images (``pipelines.deploy.calibration``):
the activation ranges come from what the line sees when nothing is wrong. The Gaussian blur at the end of
the graph (two fixed convolutions on the anomaly map) stays in float: it is the score itself, and quantizing
it only adds rounding to what every decision compares with the threshold. fp16 keeps the graph's interface
(uint8 images in, float32 maps and scores out).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base.exits import InputError
from pipelines.deploy.runtime import INPUT_NAME, PRECISIONS

FORMAT_PRECISIONS = {"onnx": PRECISIONS, "openvino": PRECISIONS, "torchscript": ("fp32",)}
# Parity with the torch model, checked on every export before it is written. fp32 and fp16: the largest map
# difference, relative to the map range (fp32 is exact up to kernel order, measured a few 1e-6; fp16 rounds
# every activation to 11 bits, measured ~1e-2 at 128 px). INT8 is another model of the same weights (on a
# trained MobileNetV2 RD model its maps differ by up to 0.7-0.85 of the range, README "Deploy: precision"):
# its check is the mean per-image correlation of the maps with torch's on the calibration images, a guard
# against a broken quantization, not an accuracy claim; its accuracy is measured on test sets instead.
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
PARITY_MIN_CORRELATION = {"int8": 0.5}
CALIBRATION_BATCH = 8
CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


def check_precision(fmt: str, precision: str) -> None:
    """One line naming what each format offers, for a precision it does not."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision not in FORMAT_PRECISIONS[fmt]:
        offered = {f: list(p) for f, p in FORMAT_PRECISIONS.items()}
        raise InputError(f"--format {fmt} has no {precision} export (offered: {offered})")


def calibration_batches(images: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """The calibration images in batches the graph takes: ``CALIBRATION_BATCH`` for a dynamic batch, else exactly
    ``batch`` (the last one filled up with images from the start, so every image is seen and no shape differs)."""
    step = batch or CALIBRATION_BATCH
    out = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        if batch is not None and len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(images, (batch - len(chunk), *images.shape[1:]))])
        out.append(chunk)
    return out


def onnx_to_fp16(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` in float16 (its uint8 input and float32 outputs kept)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def calibration_reader(calibration: np.ndarray, batch: int | None) -> Any:
    """ONNX Runtime's calibration input: the images in ``calibration_batches``, fed to the graph's input."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches(calibration, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(self.batches, None)
            return None if images is None else {INPUT_NAME: images}

    return Reader()


def quantize_onnx(path: Path, calibration: np.ndarray, batch: int | None) -> None:
    """Rewrite the ONNX file at ``path`` as ONNX Runtime's static INT8 graph (QDQ, per-channel 7-bit weights);
    ``batch``: the graph's fixed batch size, None for a dynamic one."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, _quiet_root_logger():
        source = Path(tmp) / "fp32.onnx"
        path.replace(source)
        # reduce_range: 7-bit weights. x86 CPUs without VNNI multiply uint8 by int8 in 16-bit sums that saturate
        # (ONNX Runtime's u8s8 kernels): measured on lookalike's fine-tuned model (AVX2, no VNNI), 8-bit weights
        # lost 3.8 I-AUROC to fp32, 7-bit weights 0.1 (bench/results/int8_ablation_lookalike.md).
        quantize_static(str(source), str(path), calibration_reader(calibration, batch), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=_onnx_blur_nodes(source))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer warns on the root logger about advice that does not apply here (pre-processing,
    per-channel axes of rank-1 constants); its errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _onnx_blur_nodes(path: Path) -> list[str]:
    """The Conv nodes whose weights are not the model's (the Gaussian blur of the anomaly map)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer if t.name.startswith("model.")}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in weights]


def openvino_model(onnx_path: Path, precision: str, calibration: np.ndarray | None,
                   batch: int | None) -> tuple[Any, bool]:
    """The OpenVINO model of ``onnx_path`` at ``precision``; and whether to store its weights in fp16. ``batch``:
    the graph's fixed batch size, None for a dynamic one."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if precision != "int8":
        return model, precision == "fp16"
    import nncf

    blur = [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in CONV_TYPES and not _weight_name(op).startswith("model.")]
    batches = calibration_batches(calibration, batch)
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              ignored_scope=nncf.IgnoredScope(names=blur, validate=False))
    return quantized, False


def _weight_name(op: Any) -> str:
    """The name of the constant a convolution's weights come from (through converts and reshapes)."""
    node = op.input(1).get_source_output().get_node()
    while node.get_type_name() != "Constant" and node.get_input_size():
        node = node.input(0).get_source_output().get_node()
    return node.get_friendly_name()
