"""Compare models over seeds and training budgets on shard builds (see pipelines/experiments/compare.py).

    python launch/compare.py --config configs/demo.yaml --bench demo=runs/demo/shards/demo \
        [--model "NAME=k=v k=v" ...] --seeds 0 1 2 --budgets 16 --out runs/compare \
        [--jobs 1] [--processes 2] [--weights export|export_last] [--dry-run | --report-only] [k=v ...]

Without --model: Joint RD (no projector, no contrastive terms) and RD + CCL (the config as it is).
--bench NAME=DIR[,DIR...]: several builds after one name are trained on together (all-in-all).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.base.exits import InputError  # noqa: E402
from pipelines.experiments.compare import DEFAULT_MODELS, Grid, main_grid, parse_named  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="experiment config every model starts from")
    p.add_argument("--bench", action="append", required=True, help="NAME=DIR[,DIR...] shard builds (repeatable)")
    p.add_argument("--model", action="append", default=[], help='"NAME=k=v k=v" (repeatable; first = reference)')
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=int, nargs="+", required=True, help="training epochs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=1, help="jobs at a time (on a GPU machine: several)")
    p.add_argument("--processes", type=int, default=2, help="ranks per job")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank")
    p.add_argument("--port", type=int, default=29600, help="first rendezvous port")
    p.add_argument("--weights", default="export", choices=("export", "export_last"),
                   help="evaluate the best-validation weights or the last ones")
    p.add_argument("--vis", type=int, default=4, help="heatmaps per group in each evaluation (0: none)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs, run nothing")
    p.add_argument("--report-only", action="store_true", help="tables of the jobs finished so far, run nothing")
    p.add_argument("overrides", nargs="*", help="k=v applied to every job")
    a = p.parse_args(argv)
    try:
        benches = {name: tuple(Path(d) for v in dirs for d in v.split(",") if d)
                   for name, dirs in parse_named(a.bench, "--bench").items()}
        models = parse_named(a.model, "--model") if a.model else dict(DEFAULT_MODELS)
    except InputError as err:
        p.error(str(err))
    missing = [str(d) for dirs in benches.values() for d in dirs if not (d / "manifest.json").is_file()]
    if missing:
        p.error(f"not a shard build (no manifest.json): {', '.join(missing)}")
    grid = Grid(a.config, benches, models, tuple(a.seeds), tuple(a.budgets), tuple(a.overrides), a.weights, a.vis)
    return main_grid(grid, a.out, a.jobs, a.processes, a.port, a.threads, a.dry_run, a.report_only)


if __name__ == "__main__":
    sys.exit(main())
