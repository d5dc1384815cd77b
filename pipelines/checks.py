"""Input checks that run in the entry point before any process group exists: clear errors early."""

from __future__ import annotations

import logging
from pathlib import Path

from ccl.models.offline_weights import OFFLINE
from pipelines.config import Config, ConfigError
from pipelines.distributed import collective_timeout
from pipelines.labels import Labels, load_labels
from pipelines.train_classes import TrainData, open_shards, replay_batch, select_classes
from shard_format.atomic import check_writable
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


def check_stopping(cfg: Config) -> None:
    t = cfg.train
    if t.min_epochs < 0 or not 0 <= t.val_smoothing < 1:
        raise ConfigError(f"train.min_epochs={t.min_epochs} must be >= 0 and train.val_smoothing={t.val_smoothing} "
                          "in [0, 1)")
    if t.init_from and not (Path(t.init_from) / "model.safetensors").is_file():
        raise ConfigError(f"train.init_from={t.init_from!r} is not an export (no model.safetensors there)")


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


def check_run_dir(run_dir: str) -> None:
    """run.dir must be a directory this rank can write (every rank writes checkpoints): an OSError naming it."""
    check_writable(run_dir, "run.dir")



def check_batch(cfg: Config, world: int) -> None:
    d = cfg.data
    p = d.classes_per_batch
    ranks = d.plan_ranks or world
    if p < 1 or d.batch_size < 2 * p:
        raise ConfigError(f"data.batch_size={d.batch_size} must be at least 2 x data.classes_per_batch ({p}): "
                          "every class in a batch needs a same-class partner")
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size={d.batch_size} (global) is not divisible by the {world} processes")
    if ranks % world or d.batch_size % ranks:
        raise ConfigError(f"data.plan_ranks={ranks} must be a multiple of the {world} processes and divide "
                          f"data.batch_size={d.batch_size}")
    collective_timeout(cfg)  # a positive number of seconds
    if not cfg.train.sigterm_grace > 0:
        raise ConfigError(f"train.sigterm_grace={cfg.train.sigterm_grace} must be a positive number of seconds")
    if d.batch_size // ranks < d.batch_size // p:
        raise ConfigError(f"a rank's batch ({d.batch_size // ranks}) is smaller than K = batch_size / "
                          f"classes_per_batch = {d.batch_size // p}: raise data.batch_size or classes_per_batch")


def check_loss(cfg: Config) -> None:
    """The values RDCCL would refuse only at its construction or first step (a ValueError there is a bug)."""
    loss, m = cfg.loss, cfg.model
    w = loss.local_window
    if w != "full" and not (isinstance(w, int) and w >= 1 and w % 2 == 1):
        raise ConfigError(f"loss.local_window={w!r} must be a positive odd integer or 'full'")
    scales = len(m.out_indices)
    if not loss.local_scales or any(not 0 <= s < scales for s in loss.local_scales):
        raise ConfigError(f"loss.local_scales={list(loss.local_scales)} must index the {scales} teacher scales "
                          f"(model.out_indices={list(m.out_indices)})")
    if not 0.0 <= m.noise_prob <= 1.0 or m.noise_std < 0:
        raise ConfigError(f"model.noise_prob={m.noise_prob} must be in [0, 1] and model.noise_std={m.noise_std} >= 0")


def check_model(cfg: Config) -> None:
    import timm

    m = cfg.model
    if not timm.is_model(m.teacher):
        close = timm.list_models(f"*{m.teacher[:6]}*")[:8]
        raise ConfigError(f"model.teacher={m.teacher!r} is not a timm model (similar: {close})")
    if m.pretrained not in ("hub", "none", "offline") and not Path(m.pretrained).is_file():
        raise ConfigError(f"model.pretrained={m.pretrained!r}: not hub|none|offline and no such file")
    if m.pretrained == "offline" and m.teacher not in OFFLINE:
        raise ConfigError(f"model.pretrained=offline has weights for {sorted(OFFLINE)} only, not "
                          f"model.teacher={m.teacher!r}")
    if m.checkpoint and not Path(m.checkpoint).is_file():
        raise ConfigError(f"model.checkpoint={m.checkpoint!r} does not exist")
    if m.checkpoint:  # before any weights are downloaded: an RD4AD checkpoint needs torchvision's teacher
        from ccl.models.rdccl import require_rd4ad_teacher
        from ccl.models.teacher import resolved_weights

        try:
            require_rd4ad_teacher(resolved_weights(m.teacher, m.pretrained), f"model.checkpoint={m.checkpoint}",
                                  m.teacher, m.pretrained)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def check_compile(cfg: Config) -> None:
    t = cfg.train
    if not t.compile:
        return
    import torch

    backends = torch.compiler.list_backends(exclude_tags=())  # debug backends too (aot_eager, eager)
    if t.compile_backend not in backends:
        raise ConfigError(f"train.compile_backend={t.compile_backend!r} is not one of {backends}")
