"""pipelines.base.config: the keys the trainer, scripts and docs rely on, overrides and clear errors."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.base.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[3]


def test_documented_keys_exist_and_override() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "run.dir=/tmp/x", "data.shards=[a,b]", "data.batch_size=32", "data.num_workers=0", "train.epochs=50",
        "train.max_steps=7", "model.teacher=resnet18", "model.pretrained=none", "loss.lambda_local=0.5",
        "loss.lambda_global=0", "loss.temperature=0.2", "tracking.wandb.mode=disabled", "data.plan_ranks=4",
        "train.sync_bn=false", "train.debug_checksums=true", "tracking.vis_every=0"])
    assert (cfg.run.dir, cfg.data.shards, cfg.data.batch_size, cfg.data.num_workers) == ("/tmp/x", ("a", "b"), 32, 0)
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.model.teacher, cfg.model.pretrained) == (
        50, 7, "resnet18", "none")
    assert (cfg.loss.lambda_local, cfg.loss.lambda_global, cfg.loss.temperature) == (0.5, 0.0, 0.2)
    assert (cfg.tracking.wandb.mode, cfg.data.plan_ranks, cfg.train.sync_bn) == ("disabled", 4, False)


def test_demo_config_runs_offline_on_the_demo_build() -> None:
    """`make demo` on a fresh machine: its teacher's weights come with the venv, nothing is uploaded."""
    from ccl.models.offline_weights import OFFLINE
    from pipelines.base.checks import check_batch, check_loss, check_model

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.data.shards == ("runs/demo/shards/demo",)  # where pipelines/experiments/demo.py builds the demo shards
    assert cfg.model.pretrained == "offline" and cfg.model.teacher in OFFLINE
    assert cfg.tracking.wandb.mode != "online"
    for world in (1, 2):  # the demo trains on 2 processes; one works too
        check_batch(cfg, world)
    check_model(cfg)
    check_loss(cfg)


def test_unknown_keys_and_wrong_types_are_rejected() -> None:
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(None, ["data.batch_size=big"])


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=9"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_augment_preset_and_field_overrides_round_trip(tmp_path: Path) -> None:
    from dataclasses import asdict

    from ccl.data.transforms import augment_params

    cfg = load_config(ROOT / "configs" / "demo.yaml", ["data.augment.preset=paper", "data.augment.hue=0",
                                                         "data.augment.crop_scale=[0.9,1.0]"])
    params = augment_params(**asdict(cfg.data.augment))
    assert params["hue"] == 0.0 and params["crop_scale"] == (0.9, 1.0) and params["grayscale"] == 0.0
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "preset: paper" in text and "rotation: null" in text  # the run names its preset; unset fields stay unset
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="data.augment.hue"):
        load_config(None, ["data.augment.hue=[1]"])


def _choice_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every config key typed as a fixed set of strings, with its values (found from the types, not listed here)."""
    found = {}
    for f in dataclasses.fields(cls):
        typ = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            found.update(_choice_fields(typ, f"{prefix}{f.name}."))
        elif typing.get_origin(typ) is typing.Literal:
            found[prefix + f.name] = typing.get_args(typ)
    return found


def test_every_fixed_choice_is_refused_at_load_with_the_allowed_values(tmp_path: Path) -> None:
    choices = _choice_fields()
    assert {"model.projector", "loss.global_loss", "loss.kd_mode", "train.schedule", "train.precision",
            "tracking.wandb.mode", "data.class_source", "data.augment.preset", "train.compile_mode"} <= set(choices)
    for key, allowed in choices.items():
        section, name = key.rsplit(".", 1)
        for value in allowed:  # each allowed value loads (quoted: YAML reads a bare `no` as false)
            assert _get(load_config(None, [f"{key}='{value}'"]), key) == value
        bad_file = tmp_path / "bad.yaml"
        bad_file.write_text(yaml.safe_dump(_nested(key, "bogus")))
        for path, overrides in ((None, [f"{key}=bogus"]), (bad_file, [])):  # an override, a file
            with pytest.raises(ConfigError) as err:
                load_config(path, overrides)
            assert f"{key}='bogus' is not one of {list(allowed)}" in str(err.value)
    with pytest.raises(ConfigError, match=r"loss.local_window: 'half' is none of \['int', \"'full'\"\]"):
        load_config(None, ["loss.local_window=half"])
    assert load_config(None, ["loss.local_window=full"]).loss.local_window == "full"
    with pytest.raises(ConfigError, match="quote it"):
        load_config(None, ["train.precision=no"])


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _nested(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_config_choices_are_the_library_choices() -> None:
    """The config's allowed values and the registries of the code that acts on them are the same sets."""
    from ccl.data.transforms import AUGMENT_PRESETS
    from ccl.losses.global_variants import global_losses
    from ccl.losses.local import NEGATIVES, POSITIVES
    from ccl.models.projector import PROJECTORS
    from ccl.models.rdccl import KD_MODES, MATCHES, REDUCTIONS

    choices = _choice_fields()
    assert set(choices["model.projector"]) == set(PROJECTORS)
    assert set(choices["loss.global_loss"]) == set(global_losses)
    assert set(choices["loss.kd_mode"]) == set(KD_MODES)
    assert set(choices["loss.local_positives"]) == set(POSITIVES)
    assert set(choices["loss.local_negatives"]) == set(NEGATIVES)
    assert set(choices["loss.local_match"]) == set(MATCHES)
    assert set(choices["loss.reduction"]) == set(REDUCTIONS)
    assert set(choices["data.augment.preset"]) == set(AUGMENT_PRESETS)


def _numeric_fields(cls: type) -> list[tuple[type, str]]:
    """(dataclass, field) of every field holding an int or a float (alone, optional, in a tuple or a union)."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            found += _numeric_fields(typ)
            continue
        stack, leaves = [typ], set()
        while stack:
            t = stack.pop()
            args = typing.get_args(t)
            if args and typing.get_origin(t) is not typing.Literal:
                stack += [a for a in args if a is not Ellipsis]
            else:
                leaves.add(t)
        if leaves & {int, float}:
            found.append((cls, f.name))
    return found


def test_every_numeric_field_has_a_range() -> None:
    from pipelines.base.config import RANGES

    missing = [f"{cls.__name__}.{name}" for cls, name in _numeric_fields(Config) if name not in RANGES.get(cls, {})]
    assert not missing, f"numeric config fields without a range in pipelines.base.config.RANGES: {missing}"


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs=0 must be >= 1"),
    ("train.epochs=-1", "train.epochs=-1 must be >= 1"),
    ("train.lr_rest=-0.001", "train.lr_rest=-0.001 must be >= 0"),
    ("train.lr_projector=nan", "train.lr_projector=nan must be >= 0"),
    ("train.lr_rest=1e999", "train.lr_rest=inf must be >= 0"),
    ("train.grad_accum=0", "train.grad_accum=0 must be >= 1"),
    ("train.log_every=0", "train.log_every=0 must be >= 1"),
    ("train.betas=[0.5,1.0]", "train.betas=[0.5, 1.0] must be in [0, 1)"),
    ("train.min_epochs=-1", "train.min_epochs=-1 must be >= 0"),
    ("train.val_smoothing=1", "train.val_smoothing=1.0 must be in [0, 1)"),
    ("train.collective_timeout=0", "train.collective_timeout=0.0 must be a positive number of seconds"),
    ("data.image_size=0", "data.image_size=0 must be a multiple of 32 in [32, 4096]"),
    ("data.image_size=8", "data.image_size=8 must be a multiple of 32 in [32, 4096]"),
    ("data.image_size=100", "data.image_size=100 must be a multiple of 32 in [32, 4096]"),
    ("data.image_size=30000", "data.image_size=30000 must be a multiple of 32 in [32, 4096]"),
    ("data.replay_fraction=1", "data.replay_fraction=1.0 must be in [0, 1)"),
    ("data.augment.hflip=1.5", "data.augment.hflip=1.5 must be in [0, 1]"),
    ("data.augment.crop_scale=[0,1]", "data.augment.crop_scale=[0.0, 1.0] must be in (0, 1]"),
    ("loss.temperature=0.0", "loss.temperature=0.0 must be > 0"),
    ("loss.local_window=0", "loss.local_window=0 must be >= 1"),
    ("eval.sigma=-1.0", "eval.sigma=-1.0 must be in (0, 256]"),
    ("eval.fpr_limit=0", "eval.fpr_limit=0.0 must be in (0, 1]"),
    ("eval.batch_size=0", "eval.batch_size=0 must be >= 1"),
    ("model.noise_prob=2", "model.noise_prob=2.0 must be in [0, 1]"),
    ("tracking.max_features=-5", "tracking.max_features=-5 must be >= 0"),
    ("strategy.replay_fraction=-0.1", "strategy.replay_fraction=-0.1 must be in [0, 1)"),
    ("run.seed=-1", "run.seed=-1 must be in [0, 4294967295]"),
])
def test_out_of_range_values_are_refused_when_the_config_loads(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"overrides: {message}"


def test_floats_written_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 as a string; a float field takes it (and an int field still refuses a string)."""
    cfg = load_config(None, ["train.lr_rest=1e-3", "data.augment.crop_scale=[5e-1, 1]"])
    assert cfg.train.lr_rest == 0.001 and cfg.data.augment.crop_scale == (0.5, 1.0)
    (tmp_path / "c.yaml").write_text("train:\n  lr_projector: 2e-4\n")
    assert load_config(tmp_path / "c.yaml").train.lr_projector == 0.0002
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        load_config(None, ["train.lr_rest=fast"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["train.epochs=1e3"])
