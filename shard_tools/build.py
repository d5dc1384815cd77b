"""Dataset folders -> class-tagged WebDataset shards (thin CLI; the work lives in shard_tools.builder).

    python shard_tools/build.py --datasets mvtec,visa --root mvtec=/data/mvtec --root visa=/data/VisA --out /data/shards
    python shard_tools/build.py --datasets demo --out /data/shards
    python shard_tools/build.py --datasets lookalike --out /data/shards   # needs: apt-get install extremetuxracer-data
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package from the repository, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from shard_tools.builder import BuildOptions, build_dataset  # noqa: E402
from shard_tools.errors import UserError  # noqa: E402
from shard_tools.lock import build_lock  # noqa: E402
from shard_tools.sources import SOURCES, get_source  # noqa: E402
from shard_tools.sources.common import require_root  # noqa: E402
from shard_tools.summary import format_table  # noqa: E402
from shard_tools.units import parse_bytes  # noqa: E402

GENERATED = ("demo", "inspect", "lookalike")  # datasets that need no --root (written into OUT/<name>/source)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", required=True, help=f"comma-separated, of: {', '.join(sorted(SOURCES))}")
    p.add_argument("--root", action="append", default=[], metavar="NAME=DIR", help="a dataset's folder")
    p.add_argument("--out", required=True, type=Path, help="shards go to OUT/<dataset>/")
    p.add_argument("--image-size", type=int, default=None, help="store images resized to N x N")
    p.add_argument("--max-shard-bytes", default="256MB", help="e.g. 256MB, 1GB or an integer")
    p.add_argument("--workers", type=int, default=1, help="processes that decode / resize / encode")
    p.add_argument("--resume", action="store_true", help="keep complete shards of an interrupted build")
    p.add_argument("--strict", action="store_true", help="an unreadable input is fatal instead of skipped")
    p.add_argument("--val-fraction", type=float, default=0.05, help="of each class's normal train images")
    p.add_argument("--realiad-resolution", default=None, help="256, 512, 1024 or raw (required if several)")
    p.add_argument("--realiad-jsons", default=None, help="split json folder (default: realiad_jsons)")
    p.add_argument("--cocoad-split", type=int, default=0, help="held-out category block 0..3")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def parse_roots(pairs: list[str]) -> dict[str, Path]:
    roots = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--root {pair!r}: expected NAME=DIR, e.g. mvtec=/data/mvtec_anomaly_detection")
        get_source(name)
        roots[name] = Path(folder).expanduser()
    return roots


def options_from(args: argparse.Namespace) -> BuildOptions:
    if args.image_size is not None and args.image_size <= 0:
        raise UserError(f"--image-size {args.image_size}: must be a positive number of pixels")
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    return BuildOptions(out=args.out, image_size=args.image_size, max_shard_bytes=parse_bytes(args.max_shard_bytes),
                        val_fraction=args.val_fraction, seed=args.seed, realiad_resolution=args.realiad_resolution,
                        realiad_jsons=args.realiad_jsons, cocoad_split=args.cocoad_split, strict=args.strict,
                        workers=args.workers, resume=args.resume)


def dataset_root(name: str, roots: dict[str, Path], options: BuildOptions) -> Path:
    """The folder to read. A generated set (``demo``, ``inspect``, ``lookalike``) without a root is written into
    OUT/<name>/source; ``--root demo=DIR`` reads a folder written earlier by ``shard_tools/demo_data.py``
    (``inspect_data.py``, ``lookalike_data.py``), e.g. of other sizes."""
    if name in GENERATED and name not in roots:
        from shard_tools.demo_data import write_demo
        from shard_tools.inspect_data import write_inspect
        from shard_tools.lookalike_data import write_lookalike

        root = options.out / name / "source"
        {"demo": write_demo, "inspect": write_inspect, "lookalike": write_lookalike}[name](root, seed=options.seed)
        return root
    if name not in roots:
        raise UserError(f"dataset {name!r} needs --root {name}=DIR")
    return roots[name]


def run(argv: list[str] | None = None) -> list[dict]:
    """Parse, build every dataset, print the summary; return the manifests."""
    args = parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names:
        raise UserError("--datasets is empty")
    for name in names:
        get_source(name)
    roots = parse_roots(args.root)
    options = options_from(args)
    for name in names:  # every root checked before any build starts, so a typo costs nothing
        if name not in GENERATED:
            require_root(dataset_root(name, roots, options), name)
    with ExitStack() as locks:  # no other build may write these folders meanwhile
        for name in names:
            locks.enter_context(build_lock(options.out / name))
        manifests = [build_dataset(name, dataset_root(name, roots, options), options) for name in names]
    print(format_table(manifests))
    return manifests


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (UserError, OSError) as exc:  # an OSError's text names its file (e.g. an unwritable --out)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished shard is kept; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
