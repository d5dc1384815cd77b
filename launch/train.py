"""Train RD + CCL from shards (DDP or DeepSpeed, whichever accelerate launch configured).

    accelerate launch [--config_file configs/accelerate/ddp.yaml] launch/train.py \
        --config configs/demo.yaml [train.epochs=3 data.batch_size=16 ...] [--resume RUN_DIR|auto]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pipelines.config import ConfigError, load_config  # noqa: E402
from pipelines.shards import ShardError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    parser.add_argument("--resume", default="", help="RUN_DIR to continue, or 'auto' (run.dir if it has a checkpoint)")
    parser.add_argument("overrides", nargs="*", help="a.b=value config overrides")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        from pipelines.train import train

        result = train(cfg, args.resume)
    except (ConfigError, ShardError, FileNotFoundError, FloatingPointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
