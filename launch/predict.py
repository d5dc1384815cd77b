"""Score images with an export: anomaly score per image, scores.csv, heatmap overlays.

    python launch/predict.py --checkpoint RUN/export --input DIR_OR_GLOB --out DIR \
        [--threshold auto|0.42|none] [--vis/--no-vis] [--batch-size 16] [a.b=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.config import ConfigError  # noqa: E402
from pipelines.distributed import run_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export directory (RUN/export)")
    p.add_argument("--input", required=True, help="directory of images (recursive) or a glob pattern")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threshold", default="auto", help="auto (stored by evaluation), a number, or none")
    p.add_argument("--vis", action=argparse.BooleanOptionalAction, default=True, help="write heatmap overlays")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    args = p.parse_intermixed_args(argv)  # overrides anywhere

    def body() -> int:
        import torch

        from pipelines.model import load_export
        from pipelines.predict import predict, resolve_threshold

        threshold = resolve_threshold(args.threshold, args.checkpoint)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg = load_export(args.checkpoint, args.overrides, device=device)
        summary = predict(model, cfg.data.image_size, args.input, args.out, threshold, args.vis, args.batch_size)
        print(f"{summary['scored']} images scored ({summary['anomalous']} anomalous at threshold {threshold}), "
              f"{len(summary['skipped'])} skipped; see {Path(args.out) / 'scores.csv'}")
        for path, reason in summary["skipped"]:
            print(f"  skipped {path}: {reason}")
        return 0

    return run_entry(body, (ConfigError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
