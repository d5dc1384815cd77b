"""Export a trained model for deployment: one graph from an image batch to (anomaly map, image score).

    python launch/export.py --checkpoint RUN/export --format onnx|openvino|torchscript --out DIR \
        [--image-size N] [--batch dynamic|N] [--input uint8|float]

Writes DIR/model.onnx (or model.xml + model.bin, or model.pt) and DIR/info.json (preprocessing,
the threshold of the last evaluation, teacher, image size, classes, the training config's hash).
Needs the deploy extra: pip install -e '.[deploy]'. Evaluate first so that the threshold comes along.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.base.exits import USER_ERRORS, InputError, run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training export directory (RUN/export)")
    p.add_argument("--format", required=True, choices=("onnx", "openvino", "torchscript"))
    p.add_argument("--out", required=True, help="output directory (created; an earlier export there is replaced)")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the training size)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' or a fixed batch size")
    p.add_argument("--input", default="uint8", choices=("uint8", "float"),
                   help="uint8: (B, S, S, 3) RGB, normalised in the graph; float: normalised (B, 3, S, S)")
    args = p.parse_args(argv)

    def body() -> int:
        try:  # onnx, onnxruntime and openvino are imported when their format is written
            from pipelines.deploy.export import export_model

            info = export_model(args.checkpoint, args.format, args.out, args.image_size, args.batch, args.input)
        except ImportError as err:
            raise InputError(f"{err}; install the deploy extra: pip install -e '.[deploy]'") from None
        report(info, Path(args.out))
        return 0

    return run_entry(body, USER_ERRORS)  # anything else is a bug: its traceback


def report(info: dict, out: Path) -> None:
    parity = info["parity"]
    print(f"wrote {out / info['model_file']} ({info['format']}, {info['image_size']} px, batch "
          f"{info['batch']}) in {info['exporter']['seconds']:.1f} s; map difference to torch "
          f"{parity['max_map_difference_relative']:.1e} of the range; threshold {info['image_threshold']}")
    if info["image_threshold"] is None:
        print("  no image threshold: predict.py --threshold auto needs one (evaluate RUN/export, then export again)")


if __name__ == "__main__":
    sys.exit(main())
