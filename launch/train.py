"""Train RD + CCL from shards (DDP or DeepSpeed, whichever accelerate launch configured).

    accelerate launch [--config_file configs/accelerate/ddp.yaml] launch/train.py \
        --config configs/demo.yaml [train.epochs=3 data.batch_size=16 ...] [--resume RUN_DIR|auto] [--overwrite]
    # one model per class, or the classes one after another (pipelines/experiments/strategies.py): a plain process that
    # launches every stage on --processes ranks and scores the result in RUN/eval
    python launch/train.py --config configs/demo.yaml strategy.mode=one-for-one|sequential|continual [--processes 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.base.config import load_config  # noqa: E402
from pipelines.base.exits import USER_ERRORS, run_entry  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402

# One line and status 2: bad input (config, shards, files) and a training that diverged (non-finite losses).
# Anything else is a bug and prints its traceback (status 1). Either way a rank of a multi-process run exits
# at once, without a collective, and the launcher ends the others.
EXPECTED = USER_ERRORS + (ShardError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    parser.add_argument("--resume", default="", help="RUN_DIR to continue, or 'auto' (run.dir if it has a checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if run.dir holds a run (it is moved into run.dir/previous-<time>/)")
    parser.add_argument("--processes", type=int, default=1,
                        help="ranks per stage of a staged strategy.mode (one-for-one, sequential, continual)")
    parser.add_argument("overrides", nargs="*", help="a.b=value config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides before and after --resume
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        from pipelines.training.train import train

        cfg = load_config(args.config, args.overrides)
        if cfg.strategy.mode != "joint":
            from pipelines.experiments.strategies import train_strategy

            result = train_strategy(cfg, args.config, args.overrides, args.processes)["mean"]
        else:
            from pipelines.evaluation.evaluate import evaluate_model  # train.eval_every's test-set evaluation

            result = train(cfg, args.resume, args.overwrite, evaluate_model)
        if rank == 0:
            print(f"done: {result}")
        return 0

    return run_entry(body, EXPECTED)


if __name__ == "__main__":
    sys.exit(main())
