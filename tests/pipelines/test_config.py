"""pipelines.config: the keys the trainer, scripts and docs rely on, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]


def test_documented_keys_exist_and_override() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "run.dir=/tmp/x", "data.shards=[a,b]", "data.batch_size=32", "data.num_workers=0", "train.epochs=50",
        "train.max_steps=7", "model.teacher=resnet18", "model.pretrained=none", "loss.lambda_local=0.5",
        "loss.lambda_global=0", "loss.temperature=0.2", "tracking.wandb.mode=disabled", "data.plan_ranks=4",
        "train.sync_bn=false", "train.debug_checksums=true", "tracking.vis_every=0"])
    assert (cfg.run.dir, cfg.data.shards, cfg.data.batch_size, cfg.data.num_workers) == ("/tmp/x", ("a", "b"), 32, 0)
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.model.teacher, cfg.model.pretrained) == (50, 7, "resnet18", "none")
    assert (cfg.loss.lambda_local, cfg.loss.lambda_global, cfg.loss.temperature) == (0.5, 0.0, 0.2)
    assert (cfg.tracking.wandb.mode, cfg.data.plan_ranks, cfg.train.sync_bn) == ("disabled", 4, False)


def test_demo_config_is_cheap_and_offline() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.data.shards == ("runs/demo/shards/demo",)
    assert (cfg.model.teacher, cfg.model.pretrained) == ("mobilenetv2_100", "offline")
    assert cfg.data.image_size <= 128 and cfg.train.epochs <= 16 and cfg.tracking.wandb.mode != "online"


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
