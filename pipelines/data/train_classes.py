"""Which classes a run trains on: all of them, ``data.classes`` only, or those plus replayed ``data.replay_classes``.

    data = select_classes(cfg, open_shards(cfg))
    data.current    the builds each epoch walks through (subsets of data.classes, or the builds as given)
    data.replay     the builds replay batches are drawn from (None without replay)
    data.all        what the run validates on and names in its exports: current and replay classes

A selection is a real build of those classes' records (``shard_format.subset``), written once under
``RUN/data/<dataset>-<digest>``, so the plan, the readers and every count check work on it as on any
build. Its class index is its source's, so class ids do not change with the selection. A run started
from an export (``train.init_from``) keeps the export's class ids and appends new classes after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.base.config import Config, ConfigError
from pipelines.base.model import read_info
from shard_format.builds import ShardSet, open_builds
from shard_format.fetch import ShardCache
from shard_format.subset import subset_name, write_subset


@dataclass(frozen=True)
class TrainData:
    current: ShardSet
    replay: ShardSet | None
    all: ShardSet


def select_classes(cfg: Config, shard_set: ShardSet) -> TrainData:
    """The run's builds for ``data.classes`` and ``data.replay_classes`` (see the module docstring)."""
    d = cfg.data
    check_selection(cfg, shard_set)
    if not d.classes and not d.replay_classes:
        everything = with_export_ids(shard_set, cfg.train.init_from)
        return TrainData(everything, None, everything)
    current = subsets(shard_set, d.classes or tuple(n for n in shard_set.class_names if n not in d.replay_classes),
                      Path(cfg.run.dir))
    replay = subsets(shard_set, d.replay_classes, Path(cfg.run.dir)) if d.replay_classes else []
    everything = with_export_ids(open_builds([*current, *replay]), cfg.train.init_from)

    def ids_of_all(builds: list[Path]) -> ShardSet:
        return replace(open_builds(builds), class_index=everything.class_index)

    return TrainData(ids_of_all(current), ids_of_all(replay) if replay else None, everything)


def check_selection(cfg: Config, shard_set: ShardSet) -> None:
    """Names that are classes of the builds, no class both trained and replayed, a fraction that fits."""
    d = cfg.data
    for key, names in (("data.classes", d.classes), ("data.replay_classes", d.replay_classes)):
        unknown = sorted(set(names) - set(shard_set.class_index))
        if unknown:
            raise ConfigError(f"{key}: {unknown} are not classes of {', '.join(shard_set.builds)} "
                              f"(classes: {', '.join(shard_set.class_names)})")
    both = sorted(set(d.classes) & set(d.replay_classes))
    if both:
        raise ConfigError(f"{both} are in both data.classes and data.replay_classes")
    if bool(d.replay_classes) != (d.replay_fraction > 0):
        raise ConfigError(f"data.replay_fraction={d.replay_fraction} and data.replay_classes="
                          f"{list(d.replay_classes)} go together: set both or neither")
    if not 0 <= d.replay_fraction < 1:
        raise ConfigError(f"data.replay_fraction={d.replay_fraction} must be in [0, 1)")
    if (d.classes or d.replay_classes) and d.class_source != "raw":
        raise ConfigError("data.classes / data.replay_classes select classes by name: they need "
                          "data.class_source=raw")


def replay_batch(cfg: Config) -> int:
    """Samples of every global batch drawn from the replay classes (0 without replay)."""
    return round(cfg.data.batch_size * cfg.data.replay_fraction)


def subsets(shard_set: ShardSet, classes: tuple[str, ...], run_dir: Path) -> list[Path]:
    """One subset build per source build that holds any of ``classes``."""
    out = []
    for build, manifest in zip(shard_set.builds, shard_set.manifests):
        mine = sorted(set(classes) & set(manifest["classes"]))
        if mine:
            out.append(write_subset(build, mine, run_dir / "data" / subset_name(build, mine), shard_set.opener()))
    return out


def open_shards(cfg: Config, builds: Sequence[str] = ()) -> ShardSet:
    """``builds`` (default ``data.shards``) as one set; remote shards are fetched into ``data.cache_dir``, kept up
    to ``data.cache_gb``."""
    cache = ShardCache(cfg.data.cache_dir, int(cfg.data.cache_gb * (1 << 30)))
    return open_builds(list(builds or cfg.data.shards), cache)


def with_export_ids(shard_set: ShardSet, export: str) -> ShardSet:
    """``shard_set`` with the class ids of ``export`` (its info.json) kept and other classes appended."""
    if not export:
        return shard_set
    old = read_info(export).get("class_index") or {}
    index = dict(sorted(old.items(), key=lambda kv: kv[1]))
    ordered = list(index) + [n for n in shard_set.class_names if n not in index]
    return replace(shard_set, class_index={name: i for i, name in enumerate(ordered)})
