"""Config -> RDCCL, and the export that evaluation and prediction load.

An export directory (``RUN/export/``) holds:
    model.safetensors   the trainable weights (projector, neck, decoder); the teacher is rebuilt
                        from ``model.teacher`` / ``model.pretrained``
    config.yaml         the resolved config of the run
    info.json           class index, datasets, step, and (written by evaluation) the F1-optimal
                        image threshold used by ``predict.py --threshold auto``
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ccl.models import RDCCL
from pipelines.base.config import Config, load_config, save_config
from pipelines.base.exits import InputError
from shard_format.atomic import write_atomic

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
INFO_NAME = "info.json"


def build_model(cfg: Config, start_checkpoint: bool = True, class_index: Mapping[str, int] | None = None) -> RDCCL:
    """The one module Accelerate prepares: teacher, trainable parts and losses.

    ``start_checkpoint``: load ``model.checkpoint`` (an official RD4AD file) as the starting point.
    ``class_index``: the training's classes, which a ``model.class_conditioned`` student is conditioned on.
    """
    classes: tuple[str, ...] = ()
    if cfg.model.class_conditioned:
        if not class_index:
            raise ValueError("model.class_conditioned=true: the model needs the class index it is conditioned on")
        if sorted(class_index.values()) != list(range(len(class_index))):
            raise ValueError(f"a class index numbers its classes 0..{len(class_index) - 1}, got {dict(class_index)}")
        classes = tuple(sorted(class_index, key=class_index.get))
    # Seeded construction: a teacher with pretrained=none is not saved in the export, so evaluation
    # and prediction must rebuild the very same random weights (on every rank).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        model = _construct(cfg, classes)
    if start_checkpoint and cfg.model.checkpoint:
        model.load_rd4ad_checkpoint(cfg.model.checkpoint)
    return model


def _construct(cfg: Config, classes: Sequence[str] = ()) -> RDCCL:
    m, loss = cfg.model, cfg.loss
    return RDCCL(
        teacher=m.teacher,
        pretrained=m.pretrained,
        out_indices=tuple(m.out_indices),
        projector=m.projector,
        projector_residual=m.projector_residual,
        lambda_local=loss.lambda_local,
        lambda_global=loss.lambda_global,
        temperature=loss.temperature,
        local_window=loss.local_window,
        local_scales=tuple(loss.local_scales),
        local_chunk=loss.local_chunk,
        global_loss=loss.global_loss,
        kd_mode=loss.kd_mode,
        sigma=cfg.eval.sigma,
        local_positives=loss.local_positives,
        local_negatives=loss.local_negatives,
        local_match=loss.local_match,
        reduction=loss.reduction,
        noise_prob=m.noise_prob,
        noise_std=m.noise_std,
        condition_classes=tuple(classes),
        condition_inner=m.condition_inner,
        lambda_wrong_class=loss.lambda_wrong_class,
        wrong_class_margin=loss.wrong_class_margin,
    )


def save_export(model: RDCCL, cfg: Config, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write weights, config and info atomically enough that a reader never sees half a file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # float32 whatever the training ran in (DeepSpeed casts the module to bf16/fp16): loading refuses a tensor
    # of another dtype than the model's instead of casting it, and the model is built in float32.
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.trainable_state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out / WEIGHTS_NAME)
    save_config(cfg, out / CONFIG_NAME)
    write_info(out, info)
    return out


def write_info(out_dir: str | Path, info: dict[str, Any]) -> None:
    path = Path(out_dir) / INFO_NAME
    write_atomic(path, json.dumps(info, indent=2, sort_keys=True))


def read_info(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / INFO_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def export_config(export_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of an export (``overrides`` applied), after checking that it is one."""
    export = Path(export_dir)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (export / name).is_file():
            raise FileNotFoundError(f"{export} is not an export: {name} is missing "
                                    "(train first, or point at RUN/export)")
    return load_config(export / CONFIG_NAME, list(overrides))


def model_of_export(export_dir: str | Path, cfg: Config, device: str | torch.device = "cpu") -> RDCCL:
    """The model of an export in eval mode, built from its config ``cfg`` (see ``export_config``)."""
    class_index = None
    if cfg.model.class_conditioned:  # the classes it is conditioned on, as its training numbered them
        class_index = read_info(export_dir).get("class_index")
        if not isinstance(class_index, dict) or not class_index:
            raise InputError(f"{Path(export_dir) / INFO_NAME}: a class-conditioned export needs its class_index")
    try:
        model = build_model(cfg, start_checkpoint=False, class_index=class_index)  # the export supersedes it
    except ValueError as err:
        raise InputError(f"{Path(export_dir) / INFO_NAME}: {err}") from None
    load_weights(model, Path(export_dir) / WEIGHTS_NAME)
    return model.to(device).eval()


def load_weights(model: RDCCL, path: str | Path) -> None:
    """The trainable weights of a safetensors file into ``model``: every tensor of the model's keys, shape and
    dtype (no silent cast) with finite values, or one InputError naming the file and the first tensor."""
    try:
        model.load_trainable_state_dict(read_safetensors(path), strict=True)
    except (ValueError, RuntimeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: {str(err).splitlines()[0]}") from None


def load_export(export_dir: str | Path, overrides: list[str] | tuple[str, ...] = (),
                device: str | torch.device = "cpu") -> tuple[RDCCL, Config]:
    """Rebuild the model of an export in eval mode, with its config (``overrides`` applied)."""
    cfg = export_config(export_dir, overrides)
    return model_of_export(export_dir, cfg, device), cfg


def check_safetensors(path: str | Path) -> None:
    """InputError naming ``path`` when it is not a complete safetensors file (header and data checked, nothing
    loaded)."""
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; InputError naming it when it is truncated or corrupt."""
    check_safetensors(path)
    return load_file(str(path))
