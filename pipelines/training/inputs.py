"""A training run's inputs checked before any process group does work: the config's arithmetic, the class
selection (written under run.dir), the shards it will read, the labels."""

from __future__ import annotations

import logging

from pipelines.base.checks import check_batch, check_compile, check_loss, check_model, check_run_dir, check_stopping
from pipelines.base.config import Config, ConfigError
from pipelines.data.labels import Labels, load_labels
from pipelines.data.train_classes import TrainData, open_shards, replay_batch, select_classes
from shard_format.builds import shard_file_problems
from shard_format.errors import ShardError

log = logging.getLogger(__name__)


def check_inputs(cfg: Config, world: int) -> tuple[TrainData, Labels]:
    """Validate what the config's types cannot (batch arithmetic, backbone, shards, run.dir); return the run's
    builds (the class selection made) and labels. The fixed-choice fields were checked when the config loaded."""
    check_batch(cfg, world)
    check_model(cfg)
    check_loss(cfg)
    t = cfg.train
    check_compile(cfg)
    check_stopping(cfg)
    check_run_dir(cfg.run.dir)  # the class selection is written there
    data = select_classes(cfg, open_shards(cfg))
    check_replay(cfg, data, world)
    shard_set = data.all
    for build, manifest in zip(shard_set.builds, shard_set.manifests):
        if not any(e["split"] == "train" for e in manifest["shards"]):
            raise ShardError(f"data.shards: build {build} (dataset {manifest['dataset']!r}) has no train shards")
    missing, resized = shard_file_problems(shard_set, ("train", "val") + (("test",) if t.eval_every > 0 else ()))
    if missing:
        raise ShardError(missing[0] + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for problem in resized:
        log.warning("%s: its unreadable samples count toward data.max_corrupt", problem)
    current = cfg.data.batch_size - replay_batch(cfg)
    if data.current.count("train") < current:
        raise ShardError(f"{data.current.count('train')} training samples are fewer than one batch "
                         f"(data.batch_size={cfg.data.batch_size}" + (f", {current} of them not replayed)"
                                                                      if current < cfg.data.batch_size else ")"))
    labels = load_labels(shard_set, cfg.data.class_source, cfg.data.pseudo_file)
    return data, labels


def check_replay(cfg: Config, data: TrainData, world: int) -> None:
    """Replay takes whole classes of K samples from every global batch, and a rank's share of both parts."""
    if data.replay is None:
        return
    d = cfg.data
    ranks, k, replayed = d.plan_ranks or world, d.batch_size // d.classes_per_batch, replay_batch(cfg)
    exact = abs(d.batch_size * d.replay_fraction - replayed) < 1e-9
    if not exact or replayed == 0 or replayed % k or replayed % ranks or (d.batch_size - replayed) % ranks:
        raise ConfigError(f"data.replay_fraction={d.replay_fraction} of data.batch_size={d.batch_size} is "
                          f"{d.batch_size * d.replay_fraction:g} samples: it must be a whole, non-zero multiple "
                          f"of K={k} samples per class, and both parts of the batch must divide over {ranks} ranks")
    if data.replay.count("train") < replayed * max(1, d.num_workers):
        raise ShardError(f"data.replay_classes hold {data.replay.count('train')} training samples, fewer than "
                         f"{max(1, d.num_workers)} loader worker(s) x {replayed} replayed per batch")
