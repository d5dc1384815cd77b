"""Export a trained model for deployment: one graph from an image batch to (anomaly map, image score).

    python launch/export.py --checkpoint RUN/export --format onnx|openvino|torchscript --out DIR \
        [--image-size N] [--batch dynamic|N] [--input uint8|float] [--precision fp32|fp16|int8] \
        [--calibration-shards DIR ...] [--calibration-images 64]

Writes DIR/model.onnx (or model.xml + model.bin, or model.pt) and DIR/info.json (preprocessing,
the threshold of the last evaluation, teacher, image size, classes, the training config's hash).
Needs the deploy extra: pip install -e '.[deploy]'. Evaluate first so that the threshold comes along.
--precision int8 is post-training quantization (ONNX Runtime static QDQ, OpenVINO through NNCF) calibrated
on normal training images of the shards (default: the training's data.shards); fp16 halves the weights
(ONNX: float16 graph; OpenVINO: fp16 weights, f16 arithmetic where the CPU has it). TorchScript: fp32 only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.base.exits import USER_ERRORS, InputError, run_entry  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training export directory (RUN/export)")
    p.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"))
    p.add_argument("--out", required=True, help="output directory (created; an earlier export there is replaced)")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the training size)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' or a fixed batch size")
    p.add_argument("--input", default="uint8", choices=("uint8", "float"),
                   help="uint8: (B, S, S, 3) RGB, normalised in the graph; float: normalised (B, 3, S, S)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--calibration-shards", action="append", default=[],
                   help="int8: shard build of the calibration images (repeatable; default: the training's)")
    p.add_argument("--calibration-images", type=int, default=64, help="int8: normal training images to calibrate on")
    args = p.parse_args(argv)

    def body() -> int:
        try:  # onnx, onnxruntime and openvino are imported when their format is written
            from pipelines.deploy.export import export_model

            info = export_model(args.checkpoint, args.format, args.out, args.image_size, args.batch, args.input,
                                args.precision, args.calibration_shards, args.calibration_images)
        except ImportError as err:
            raise InputError(f"{err}; install the deploy extra: pip install -e '.[deploy]'") from None
        report(info, Path(args.out))
        return 0

    return run_entry(body, USER_ERRORS + (ShardError,))  # anything else is a bug: its traceback


def report(info: dict, out: Path) -> None:
    parity = info["parity"]
    print(f"wrote {out / info['model_file']} ({info['format']} {info['precision']}, {info['image_size']} px, batch "
          f"{info['batch']}) in {info['exporter']['seconds']:.1f} s; map difference to torch "
          f"{parity['max_map_difference_relative']:.1e} of the range; threshold {info['image_threshold']}")
    if info["calibration"]:
        cal = info["calibration"]
        print(f"  calibrated on {cal['images']} normal {cal['split']} images of {', '.join(cal['shards'])}")
    if info["image_threshold"] is None:
        print("  no image threshold: predict.py --threshold auto needs one (evaluate RUN/export, then export again)")


if __name__ == "__main__":
    sys.exit(main())
