"""Tiny shard builds for the training tests (plain tarfile; same layout as shard_tools' builds)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from shard_format.schema import make_key
from tests.pipelines.shard_fixtures import tar_keys, write_manifest, write_shard


def class_image(class_id: int, index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured image whose colour and stripe frequency depend on the class."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.array([(37 * class_id) % 255, (91 * class_id + 50) % 255, (53 * class_id + 120) % 255], np.float32)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (class_id + 2) * (x + 0.3 * y) + index)
    image = base[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_build(out: str | Path, dataset: str, classes: Sequence[str], shard_sizes: Sequence[int],
                split: str = "train", size: int = 64, seed: int = 0, val_sizes: Sequence[int] = (),
                encoded: str = "png") -> Path:
    """A build dir with ``{split}-NNNNNN.tar`` shards of ``shard_sizes`` samples (classes interleaved)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = {f"{dataset}/{c}": i for i, c in enumerate(sorted(classes))}
    entries, counts, n = [], {}, 0
    for sp, sizes in ((split, shard_sizes), ("val", val_sizes)):
        for s, count in enumerate(sizes):
            samples = []
            for _ in range(count):
                cls = classes[n % len(classes)]
                samples.append(_sample(dataset, cls, index[f"{dataset}/{cls}"], sp, n, size, rng, encoded))
                counts.setdefault(sp, {}).setdefault(cls, {"normal": 0, "anomalous": 0})["normal"] += 1
                n += 1
            entries.append(write_shard(out, sp, s, samples))
    return write_manifest(out, dataset, index, counts, entries)


def _sample(dataset: str, cls: str, class_id: int, split: str, n: int, size: int, rng: np.random.Generator,
            encoded: str) -> list[tuple[str, bytes]]:
    key = make_key(dataset, cls, split, "good", f"img{n:05d}")
    image = class_image(class_id, n, size, rng)
    ok, png = cv2.imencode("." + encoded, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    meta = {"dataset": dataset, "class_name": cls, "class_id": class_id, "group": cls, "split": split,
            "label": 0, "defect": "good", "view": "", "source": f"{cls}/{n}.png", "width": size, "height": size}
    return [(f"{key}.{encoded}", png.tobytes()), (f"{key}.json", json.dumps(meta).encode()),
            (f"{key}.cls", str(class_id).encode())]


def keys_of(build: str | Path, split: str = "train") -> list[str]:
    """Every sample key of a build's split, read back independently of the training reader."""
    return tar_keys(build, split)


def toy_training_dir(root: Path) -> Path:
    """The trainer tests' data under ``root``: 4 classes, train shards of 20 + 12 samples and 10 val
    samples at 64 px in ``root/shards``, and an empty config ``root/empty.yaml``."""
    write_build(root / "shards", "toy", ["a", "b", "c", "d"], [20, 12], size=64, val_sizes=[10])
    (root / "empty.yaml").write_text("{}\n")
    return root
