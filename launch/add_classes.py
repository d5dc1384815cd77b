"""Add classes to a trained model: train them with replay of the classes it knows, then score every class.

    python launch/add_classes.py --export runs/line/export --shards data/shards/line data/shards/new_parts \
        --classes new_parts/bracket new_parts/clip --out runs/line_v2 [--replay 0.25] [--processes 2] [k=v ...]

The new run starts from the export's weights and config, keeps its class ids, and draws --replay of every
batch from the old classes' training samples (they must be in --shards). It writes RUN/export and
RUN/eval (metrics over every class, the new threshold); the old export is not touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.base.exits import USER_ERRORS, run_entry  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, type=Path, help="the trained model (RUN/export)")
    p.add_argument("--shards", required=True, nargs="+", type=Path, help="builds of the old and the new classes")
    p.add_argument("--classes", required=True, nargs="+", help="the new classes, dataset/class")
    p.add_argument("--out", required=True, type=Path, help="run directory of the new model")
    p.add_argument("--replay", type=float, default=0.25, help="share of every batch from the old classes")
    p.add_argument("--processes", type=int, default=1, help="ranks of the training and the evaluation")
    p.add_argument("overrides", nargs="*", help="k=v applied to the new training (e.g. train.epochs=16)")
    a = p.parse_args(argv)

    def body() -> int:
        from pipelines.experiments.strategies import add_classes

        result = add_classes(a.export, a.shards, a.classes, a.out, a.replay, a.overrides, a.processes)
        print(f"done: {result['mean']}")
        return 0

    return run_entry(body, USER_ERRORS + (ShardError,))


if __name__ == "__main__":
    sys.exit(main())
