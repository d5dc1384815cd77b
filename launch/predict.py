"""Score images: anomaly score per image, scores.csv, heatmap overlays.

    python launch/predict.py --checkpoint RUN/export --input DIR_OR_GLOB --out DIR \
        [--threshold auto|0.42|none] [--vis/--no-vis] [--batch-size 16] [--class NAME] [a.b=value ...]
    python launch/predict.py --model DEPLOY/model.onnx --input DIR_OR_GLOB --out DIR [--threads N] ...

``--checkpoint`` runs the torch model of a training export; ``--model`` an exported graph
(launch/export.py: model.onnx with onnxruntime, model.xml with OpenVINO; neither needs torch, or
model.pt with torch). Both write the same files.

A TorchScript file is a program: loading it runs whatever code it holds. ``--model DIR/model.pt`` is
refused unless ``--trust-torchscript`` says the file is yours; use model.onnx or model.xml otherwise.
Images whose header claims more than ``--max-pixels`` (default: CCL_MAX_IMAGE_PIXELS or 100 megapixels)
are skipped without being decoded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.base.exits import USER_ERRORS, InputError, run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training export directory (RUN/export): the torch model")
    source.add_argument("--model", help="exported graph: DIR/model.onnx, DIR/model.xml or DIR/model.pt")
    p.add_argument("--input", required=True, help="directory of images (recursive) or a glob pattern")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threshold", default="auto", help="auto (stored by evaluation), a number, or none")
    p.add_argument("--vis", action=argparse.BooleanOptionalAction, default=True, help="write heatmap overlays")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--class", dest="class_name", default="",
                   help="--checkpoint of a class-conditioned model: the class of every input image (dataset/class)")
    p.add_argument("--threads", type=int, help="--model: CPU threads of the runtime (default: its own choice)")
    p.add_argument("--trust-torchscript", action="store_true",
                   help="--model DIR/model.pt: load it although a TorchScript file runs arbitrary code (only a "
                        "file you exported yourself; prefer model.onnx or model.xml)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images whose header claims more pixels (default: $CCL_MAX_IMAGE_PIXELS or 100000000)")
    p.add_argument("overrides", nargs="*", help="--checkpoint: config overrides a.b=value")
    args = p.parse_intermixed_args(argv)  # overrides anywhere

    def body() -> int:
        from pipelines.deploy.predict import check_batch_size, predict
        from shard_format.image_header import max_pixels

        check_batch_size(args.batch_size)  # before any model is loaded
        limit = max_pixels() if args.max_pixels is None else args.max_pixels  # a bad environment value: one line
        if limit < 1:
            raise InputError(f"--max-pixels must be a whole number >= 1, got {limit}")
        score, image_size, threshold = (_exported(args) if args.model else _torch(args))
        summary = predict(score, image_size, args.input, args.out, threshold, args.vis, args.batch_size, limit)
        print(f"{summary['scored']} images scored ({summary['anomalous']} anomalous at threshold {threshold}), "
              f"{len(summary['skipped'])} skipped; see {Path(args.out) / 'scores.csv'}")
        for path, reason in summary["skipped"]:
            print(f"  skipped {path}: {reason}")
        return 0

    from shard_format.errors import ShardError

    return run_entry(body, (*USER_ERRORS, ShardError))  # ConfigError and DeployError are InputErrors


def _exported(args: argparse.Namespace):  # numpy, OpenCV and the model's runtime only: no torch
    from pipelines.deploy.predict import resolve_threshold
    from pipelines.deploy.runtime import load_deployed

    if args.overrides:
        raise InputError(f"config overrides {args.overrides} apply to --checkpoint only; an exported graph is fixed")
    if args.class_name:
        raise InputError(f"--class {args.class_name} applies to --checkpoint only: an exported graph is never "
                         "class-conditioned")
    model = load_deployed(args.model, args.threads, trust_torchscript=args.trust_torchscript)
    threshold = resolve_threshold(args.threshold, model.path.parent,
                                  "evaluate the training export, then export it again")
    return model, model.image_size, threshold


def _torch(args: argparse.Namespace):
    import torch

    from ccl.models.inference_graph import InferenceGraph
    from pipelines.base.model import load_export
    from pipelines.deploy.predict import resolve_threshold

    threshold = resolve_threshold(args.threshold, args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = load_export(args.checkpoint, args.overrides, device=device)
    return InferenceGraph(model, "uint8", class_id(model, args)).run_numpy, cfg.data.image_size, threshold


def class_id(model, args: argparse.Namespace) -> int | None:
    """--class as the index of a class-conditioned model's classes; None for a model without conditioning."""
    if model.condition is None:
        if args.class_name:
            raise InputError(f"--class {args.class_name}: {args.checkpoint} is not class-conditioned")
        return None
    names = model.condition.class_names
    if args.class_name not in names:
        raise InputError(f"{args.checkpoint} is conditioned on the image's class: give --class, one of {list(names)}"
                         if not args.class_name else f"--class {args.class_name} is not one of {list(names)}")
    return names.index(args.class_name)


if __name__ == "__main__":
    sys.exit(main())
