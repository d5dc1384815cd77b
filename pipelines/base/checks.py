"""Input checks that run in the entry point before any process group exists: clear errors early."""

from __future__ import annotations

import logging
from pathlib import Path

from ccl.models.offline_weights import OFFLINE
from ccl.models.rdccl import setting_problems
from pipelines.base.config import Config, ConfigError
from pipelines.base.distributed import collective_timeout
from shard_format.atomic import check_writable

log = logging.getLogger(__name__)


def check_stopping(cfg: Config) -> None:
    t = cfg.train
    if t.min_epochs < 0 or not 0 <= t.val_smoothing < 1:
        raise ConfigError(f"train.min_epochs={t.min_epochs} must be >= 0 and train.val_smoothing={t.val_smoothing} "
                          "in [0, 1)")
    if t.init_from and not (Path(t.init_from) / "model.safetensors").is_file():
        raise ConfigError(f"train.init_from={t.init_from!r} is not an export (no model.safetensors there)")


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
    keys = {"local_window": ("loss.local_window", loss.local_window),
            "local_scales": ("loss.local_scales", list(loss.local_scales)),
            "noise_prob": ("model.noise_prob", m.noise_prob), "noise_std": ("model.noise_std", m.noise_std)}
    problems = setting_problems(loss.local_window, loss.local_scales, len(m.out_indices), m.noise_prob, m.noise_std)
    for name, problem in problems.items():
        key, value = keys[name]
        raise ConfigError(f"{key}={value} {problem} (model.out_indices={list(m.out_indices)})")
    if m.condition_inner and not m.class_conditioned:
        raise ConfigError("model.condition_inner=true needs model.class_conditioned=true")
    if loss.lambda_wrong_class and not m.class_conditioned:
        raise ConfigError(f"loss.lambda_wrong_class={loss.lambda_wrong_class} needs model.class_conditioned=true")
    if m.class_conditioned and cfg.data.class_source != "raw":
        raise ConfigError(f"model.class_conditioned=true conditions on the images' classes, which inference knows; "
                          f"data.class_source={cfg.data.class_source} labels are not: use data.class_source=raw")
    if m.class_conditioned and cfg.data.replay_classes:
        raise ConfigError("model.class_conditioned=true with data.replay_classes: a conditioned model is trained on "
                          "all its classes jointly, its class table cannot grow")


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
