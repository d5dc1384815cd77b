"""What breaks post-training INT8 of an RD model: ONNX Runtime static quantization of one trained export under
variants of what is quantized and how, each evaluated on the test set (README "Deploy: precision").

    python bench/int8_ablation.py --export runs/fig1a/lookalike/joint_rd/e24/s0/export \
        --shards runs/bench/shards/lookalike [--variants all,a16w8,network,map_ops,...]

Variants (every one keeps the Gaussian blur in float, as launch/export.py does):
    all          the export's INT8 as launch/export.py made it before 7-bit weights (uint8 x int8, 8-bit weights)
    w7           7-bit weights (reduce_range; launch/export.py's setting)
    u8u8         uint8 weights (other kernels: no 16-bit saturation on CPUs without VNNI)
    a16w8        16-bit activations, 8-bit weights
    network      only the network's operations (Conv, ConvTranspose, Relu, Clip, Add)
    map_ops      only the anomaly map's operations (Mul, Div, Resize, ReduceSum, ReduceL2, Sub)
    float_teacher / float_student   the teacher's / the student's convolutions left in float
    percentile / entropy            other activation calibrations
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("I-AUROC", "P-AUROC", "AUPRO")
NETWORK = ["Conv", "ConvTranspose", "Relu", "Clip", "Add"]
MAP_OPS = ["Mul", "Div", "Resize", "ReduceSum", "ReduceL2", "Sub"]
STUDENT = ("model.neck", "model.decoder", "model.projector")


def variant_options(name: str, model: Path) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantType

    convs = {prefix: conv_nodes(model, prefix) for prefix in (("model.teacher",), STUDENT)}
    return {
        "all": {}, "w7": {"reduce_range": True}, "u8u8": {"weight_type": QuantType.QUInt8},
        "a16w8": {"activation_type": QuantType.QUInt16}, "network": {"op_types_to_quantize": NETWORK},
        "map_ops": {"op_types_to_quantize": MAP_OPS}, "float_teacher": {"nodes_to_exclude": convs["model.teacher",]},
        "float_student": {"nodes_to_exclude": convs[STUDENT]},
        "percentile": {"calibrate_method": CalibrationMethod.Percentile},
        "entropy": {"calibrate_method": CalibrationMethod.Entropy},
    }[name]


def conv_nodes(model: Path, prefixes: tuple[str, ...]) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(model)).graph.node
            if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1].startswith(prefixes)]


def quantized(base: Path, out: Path, calibration: Any, options: dict[str, Any]) -> Path:
    """``base``'s fp32 export quantized with ``options`` into ``out`` (info.json's file hashes renewed)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from pipelines.deploy.precision import _onnx_blur_nodes, _quiet_root_logger, calibration_reader
    from pipelines.deploy.runtime import file_sha256

    shutil.copytree(base, out)
    (out / "model.onnx").unlink()
    options = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, **options}
    options["nodes_to_exclude"] = options.get("nodes_to_exclude", []) + _onnx_blur_nodes(base / "model.onnx")
    with _quiet_root_logger():
        quantize_static(str(base / "model.onnx"), str(out / "model.onnx"), calibration_reader(calibration, 8),
                        quant_format=QuantFormat.QDQ, per_channel=True, **options)
    info = json.loads((out / "info.json").read_text())
    info.update(precision="int8", files={"model.onnx": file_sha256(out / "model.onnx")})
    (out / "info.json").write_text(json.dumps(info))
    return out / "model.onnx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="a training export")
    p.add_argument("--shards", required=True, help="its build (test set and calibration images)")
    p.add_argument("--variants", default="all,w7,u8u8,a16w8,network,map_ops,float_teacher,float_student,"
                                         "percentile,entropy")
    args = p.parse_args()
    from pipelines.base.model import load_export
    from pipelines.data.train_classes import open_shards
    from pipelines.deploy.calibration import read_calibration_images
    from pipelines.deploy.evaluate_deployed import run_deployed_evaluation
    from pipelines.deploy.export import export_model

    _, cfg = load_export(args.export)
    calibration, _ = read_calibration_images(open_shards(cfg, [args.shards]), 64, cfg.data.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "fp32"
        export_model(args.export, "onnx", base, batch="8")
        for name in ["fp32"] + args.variants.split(","):
            model = base / "model.onnx" if name == "fp32" else quantized(
                base, Path(tmp) / name, calibration, variant_options(name, base / "model.onnx"))
            result = run_deployed_evaluation(model, [args.shards], model.parent / "eval", vis=0,
                                             overrides=["eval.num_workers=0"])
            rows.append(f"| {name} | " + " | ".join(f"{100 * result['mean'][m]:.1f}" for m in METRICS) + " |")
            print(rows[-1], flush=True)
    print(f"\n`python bench/int8_ablation.py {' '.join(sys.argv[1:])}`\n\n| variant | " + " | ".join(METRICS)
          + " |\n|---|---:|---:|---:|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
