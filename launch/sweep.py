"""Run one paper table's ablation rows (train, evaluate) and write ``<sweep dir>/table<N>.md``.

    python launch/sweep.py --table 5 [--config configs/all_in_all_30.yaml] [--dry-run] [k=v ...]
        [--launcher "accelerate launch --config_file configs/accelerate/X.yaml"] [--out DIR] [--force]
    python launch/sweep.py --table cocoad     # COCO-AD: the four splits and their mean

Without --config a sweep runs on the experiment its file names (the paper's ablations: MVTec AD + VisA
+ BTAD all-in-all, configs/all_in_all_30.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.base.config import ConfigError  # noqa: E402
from pipelines.experiments.sweep import load_sweep, plan_sweep, run_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="3, 5, 6, 7, cocoad (configs/sweeps/) or a sweep YAML file")
    p.add_argument("--config", default=None, help="the experiment config the rows modify (default: the sweep's)")
    p.add_argument("--launcher", default="accelerate launch", help="command that runs the train/eval scripts")
    p.add_argument("--out", default=None, help="sweep directory (default: <run.dir>/table<N>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun rows that already have eval/metrics.json")
    p.add_argument("overrides", nargs="*", help="k=v applied to every row (after the row's own)")
    a = p.parse_args(argv)
    try:  # a bad table, row or override fails before anything runs, with the file and key named
        sweep = load_sweep(a.table)
        plans = plan_sweep(sweep, a.config, a.overrides, a.out, a.launcher)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    experiment = Path(a.config or sweep.default_config).stem
    run_sweep(sweep, plans, dry_run=a.dry_run, force=a.force, experiment=experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
