"""Quantization-aware fine-tuning before an INT8 export: the student learns to work through INT8 rounding.

    python launch/qat.py --checkpoint RUN/export --out RUN/export-int8 [--epochs 3] [--images 1024] \
        [--shards DIR ...] [--lr 1e-4] [--batch 8] [--seed 0]
    accelerate launch launch/evaluate.py --checkpoint RUN/export-int8 ...   # its own threshold
    python launch/export.py --checkpoint RUN/export-int8 --format openvino --precision int8 --out deploy/line

Writes a training export (weights, config, info.json with a "qat" record: source, epochs, images, the
simulated INT8 loss per epoch). Its scores are another model's: it carries no image threshold until it is
evaluated. One process, on the CPU (minutes for the demo's model; the paper's wide_resnet50_2 wants a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.base.exits import USER_ERRORS, run_entry  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training export directory (RUN/export)")
    p.add_argument("--out", required=True, help="output export directory (an earlier output of this tool is replaced)")
    p.add_argument("--shards", action="append", default=[],
                   help="build to train on (repeatable; default: the training's)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=1024, help="normal training images to fine-tune on")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def body() -> int:
        from pipelines.deploy.qat import finetune_for_int8

        info = finetune_for_int8(args.checkpoint, args.out, args.shards, args.epochs, args.images, args.lr,
                                 args.batch, args.seed)
        qat = info["qat"]
        losses = " -> ".join(f"{v:.4f}" for v in qat["simulated_int8_loss"])
        print(f"wrote {args.out}: {qat['epochs']} epochs on {qat['images']['images']} normal training images in "
              f"{qat['seconds']:.0f} s; simulated INT8 loss {losses}")
        print(f"  next: evaluate {args.out} (its threshold), then launch/export.py --precision int8")
        return 0

    return run_entry(body, USER_ERRORS + (ShardError, FloatingPointError))  # FloatingPointError: diverged weights


if __name__ == "__main__":
    sys.exit(main())
