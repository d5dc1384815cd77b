"""Tracker: W&B offline keeps scalars and images, disabled writes nothing, other ranks write nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipelines.base.config import load_config
from pipelines.base.tracking import Tracker


def _use(tracker: Tracker) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = 255
    tracker.log({"train/kd": 0.25, "train/loss": 0.5}, step=1)
    tracker.log({"val/loss": float("nan")}, step=2)
    tracker.log_images("val/heatmaps", [(image, "a square")], step=2)
    tracker.log_table("val/classes", ["class", "v"], [["a", 1.0]], step=2)
    tracker.finish()


def test_offline_run_holds_scalars_and_images(tmp_path: Path) -> None:
    cfg = load_config(None, ["tracking.wandb.mode=offline", "tracking.wandb.project=test"])
    tracker = Tracker(cfg, tmp_path, is_main=True)
    assert tracker.enabled
    _use(tracker)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    deadline = time.time() + 20
    while True:  # wandb-core may still be flushing its log after finish() returned
        data = next(runs[0].glob("*.wandb")).read_bytes()
        if (b"train/kd" in data and b"val/loss" in data) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert b"train/kd" in data and b"val/loss" in data
    assert list(runs[0].rglob("media/images/**/*.png"))  # the heatmap went into the W&B run
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["train/kd"] == 0.25 and lines[1]["val/loss"] == "nan"
    assert (tmp_path / "wandb_id.txt").is_file()


def test_disabled_writes_nothing_to_wandb(tmp_path: Path) -> None:
    cfg = load_config(None, ["tracking.wandb.mode=disabled"])
    _use(Tracker(cfg, tmp_path, is_main=True))
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id.txt").exists()
    assert (tmp_path / "log.jsonl").is_file()  # the plain log is always kept
    assert len(list((tmp_path / "images").glob("*.png"))) == 1


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    cfg = load_config(None, ["tracking.wandb.mode=offline"])
    tracker = Tracker(cfg, tmp_path / "run", is_main=False)
    assert not tracker.enabled
    _use(tracker)
    assert not (tmp_path / "run").exists()
