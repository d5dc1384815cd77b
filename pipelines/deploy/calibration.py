"""Calibration images for a quantized export: normal training images read from the shards.

    images, record = read_calibration_images(shard_set, n=64, size=128)   # (n, S, S, 3) uint8 RGB, what info.json keeps

INT8 post-training quantization measures the range of every activation on these images; they must
look like what the line will see when nothing is wrong, so they come from the training split and only
normal samples are kept: the first ones of each training shard, an equal share from every shard (a build
shuffles its classes into its shards, so the first samples of a shard are a draw over its classes). The
choice is deterministic and recorded (the keys' sha256) in the export's info.json.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ccl.data.image_ops import resize_image
from pipelines.base.config import Config
from pipelines.base.exits import InputError
from pipelines.data.train_classes import open_shards
from shard_format.builds import ShardSet
from shard_format.errors import ShardError
from shard_format.reader import iter_range
from shard_format.record import decode_record

SPLIT = "train"


def refuse_conditioned(model: Any, checkpoint: str | Path) -> None:
    """InputError for a class-conditioned model: a deployed graph takes images only and one set of INT8 ranges,
    while such a model scores every image under its class (launch/predict.py --checkpoint ... --class scores
    it in torch)."""
    condition = getattr(model, "condition", None)
    if condition is not None:
        raise InputError(f"{checkpoint} is class-conditioned ({condition.num_classes} classes): export and INT8 "
                         "fine-tuning take models that score every image alike; score it with launch/predict.py "
                         "--checkpoint ... --class NAME or launch/evaluate.py")


def image_shards(cfg: Config, given: Sequence[str], checkpoint: str | Path, option: str) -> ShardSet:
    """The builds to read normal training images from: ``given``, else the ones the model was trained on
    (InputError naming ``option`` when there are neither)."""
    builds = list(given) or list(cfg.data.shards)
    if not builds:
        raise InputError(f"{checkpoint}: its training config names no shards; give {option}")
    return open_shards(cfg, builds)


def read_calibration_images(shard_set: ShardSet, n: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to ``n`` normal training images, resized to ``size``: (n, S, S, 3) uint8, and their record."""
    if n < 1:
        raise InputError(f"--calibration-images must be at least 1, got {n}")
    shards = [url for url, count in shard_set.sizes(SPLIT) if count > 0]
    if not shards:
        raise InputError(f"no {SPLIT} shards in {', '.join(shard_set.builds)}: nothing to calibrate on")
    per_shard = math.ceil(n / len(shards))
    images, keys, opener = [], [], shard_set.opener()
    for url in shards:
        taken = 0
        for sample in iter_range(url, 0, None, opener=opener):
            if taken == per_shard or len(images) == n:
                break
            try:
                record = decode_record(sample)
            except ShardError:
                continue  # an undecodable sample is the reader's business; calibration needs good ones
            if record.meta.label == 0:
                images.append(resize_image(record.image, size))
                keys.append(record.key)
                taken += 1
    if not images:
        raise InputError(f"no decodable normal {SPLIT} image in {', '.join(shard_set.builds)}")
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    record = {"split": SPLIT, "label": "normal", "images": len(images), "requested": n,
              "shards": list(shard_set.builds), "keys_sha256": digest, "first_key": keys[0]}
    return np.stack(images), record
