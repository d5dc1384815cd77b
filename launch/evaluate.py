"""Evaluate an export on test shards (any number of ranks), or saved anomaly maps of any method.

    accelerate launch launch/evaluate.py --checkpoint RUN/export --shards /data/shards/mvtec \
        [--shards ...] [--out RUN/eval] [--vis 8] [eval.batch_size=32 ...]
    accelerate launch launch/evaluate.py --config configs/rd4ad.yaml --shards /data/shards/mvtec \
        model.checkpoint=wres50_bottle.pth "eval.classes=[mvtec/bottle]"      # an official RD4AD checkpoint
    python launch/evaluate.py --model DEPLOY/model.xml --shards /data/shards/mvtec [--threads N]   # an exported
        graph (launch/export.py, any format and precision) in its runtime, one process
    python launch/evaluate.py --maps DIR [--masks DIR] [--group-depth 1] --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from ccl.metrics import to_markdown  # noqa: E402
from pipelines.base.exits import USER_ERRORS, run_entry  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402

EXPECTED = USER_ERRORS + (ShardError,)  # one line, status 2; anything else is a bug: its traceback, status 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="export directory (RUN/export)")
    p.add_argument("--config", help="instead of an export: a config whose model.checkpoint is an RD4AD checkpoint")
    p.add_argument("--model", help="instead of an export: an exported graph, DIR/model.onnx, model.xml or model.pt")
    p.add_argument("--threads", type=int, help="--model: CPU threads of the runtime (default: its own choice)")
    p.add_argument("--trust-torchscript", action="store_true", help="--model: load a TorchScript file (runs code)")
    p.add_argument("--shards", action="append", default=[],
                   help="shard build: a folder or an s3:// gs:// https:// prefix (repeatable)")
    p.add_argument("--out", help="output directory (default: eval/ beside the export; run.dir/eval with --config)")
    p.add_argument("--vis", type=int, help="heatmaps of the N highest/lowest-scoring images per group")
    p.add_argument("--maps", help="standalone: directory of anomaly maps (.npy or 16-bit PNG)")
    p.add_argument("--masks", help="standalone: directory of ground-truth masks (missing mask = normal)")
    p.add_argument("--group-depth", type=int, default=1, help="standalone: folders that name a group")
    p.add_argument("--score-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="linear bins over a known score range (default: scale-free log-linear bins)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    args = p.parse_intermixed_args(argv)  # overrides anywhere
    if not args.maps and not ((args.checkpoint or args.config or args.model) and args.shards):
        p.error("give --checkpoint (or --config, or --model) and --shards, or --maps")
    if sum(bool(a) for a in (args.checkpoint, args.config, args.model)) > 1:
        p.error("give one of --checkpoint (an export), --config (an RD4AD checkpoint) and --model (an exported graph)")
    score_range = tuple(args.score_range) if args.score_range else "auto"

    def body() -> int:
        from pipelines.evaluation.evaluate import evaluate_maps, run_evaluation

        if args.maps:
            result = evaluate_maps(args.maps, args.masks, args.out, args.group_depth, score_range=score_range)
        elif args.model:
            from pipelines.deploy.evaluate_deployed import run_deployed_evaluation

            result = run_deployed_evaluation(args.model, args.shards, args.out, args.vis, args.overrides,
                                             args.threads, score_range, args.trust_torchscript)
        else:
            result = run_evaluation(args.checkpoint, args.shards, args.out, args.vis, args.overrides, score_range,
                                    args.config)
        if int(os.environ.get("RANK", 0)) == 0:
            print(to_markdown(result), end="")
            print(summary_line(result))
        return 0

    return run_entry(body, EXPECTED)


def summary_line(result: dict) -> str:
    """Scored / expected images, what was not scored, and whether the threshold was stored."""
    line = f"{result['images']} of {result['expected'] if result['expected'] is not None else '?'} test images scored"
    if result["missing"]:
        return line + (f", {result['missing']} not scored (see 'skipped' in metrics.json): the metrics are partial "
                       "and no threshold was stored")
    quick = "" if result["complete"] else " (eval.max_images, a quick look: not stored)"
    return line + f"; F1-optimal image threshold {result['threshold']}{quick}"


if __name__ == "__main__":
    sys.exit(main())
