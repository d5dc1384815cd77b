"""Training input pipeline throughput per worker, against raw decoding of the same shards (same run).

    .venv/bin/python bench/loader.py [--samples256 384] [--samples1024 96] [--repeats 2]

Writes two synthetic builds (256 px and 1024 px PNG, 16 classes, classes interleaved as the shard
builder does) to a temporary directory, then measures in one process (= one loader worker):
  raw   read the tar + decode the image (cv2) of every sample
  full  the training stream: plan, read, shuffle buffer, labels, class-aware batching (8 x 2),
        decode, anchor resize + augmented view (crop, flip, rotation, jitter, grayscale) at 256 px,
        uint8 batches; "+norm" adds the ImageNet normalisation of the batch on the CPU (in training
        it runs on the device).
  floor raw plus the two views of every sample (``train_views``: the resize to 256 px, then one affine
        warp and one colour matrix), the per-sample work no loader can skip; full / floor is what the stream adds on top
        (planning, shuffling, batching, collation).
Prints samples/s, the ratios full/raw (goal >= 0.8) and full/floor, and what a 16-core node would deliver with
15 loader workers. Repeats interleave the three and keep the best of each (the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccl.data.transforms import augment_params, normalize_batch, train_views  # noqa: E402
from pipelines.base.config import AugmentConfig  # noqa: E402
from pipelines.data.class_batches import batch_layout  # noqa: E402
from pipelines.data.labels import load_labels  # noqa: E402
from pipelines.data.train_data import StreamSpec, TrainStream  # noqa: E402
from shard_format.builds import open_builds  # noqa: E402
from shard_format.reader import iter_range  # noqa: E402
from shard_format.record import decode_record  # noqa: E402
from shard_format.schema import make_key, shard_name  # noqa: E402

CLASSES = [f"c{i:02d}" for i in range(16)]


def write_build(out: Path, size: int, samples: int, per_shard: int = 64) -> Path:
    out.mkdir(parents=True)
    rng = np.random.default_rng(size)
    index = {f"bench/{c}": i for i, c in enumerate(CLASSES)}
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    entries = []
    for s in range(0, samples, per_shard):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for n in range(s, min(samples, s + per_shard)):
                c = n % len(CLASSES)
                texture = 0.5 + 0.5 * np.sin(2 * np.pi * (c + 3) * (x + 0.4 * y) + n)
                image = (np.array([40 + 12 * c, 200 - 9 * c, 90], np.float32) * (0.5 + 0.5 * texture[..., None])
                         + rng.normal(0, 6, (size, size, 3))).clip(0, 255).astype(np.uint8)
                key = make_key("bench", CLASSES[c], "train", "good", f"i{n:05d}")
                meta = {"dataset": "bench", "class_name": CLASSES[c], "class_id": c, "group": CLASSES[c],
                        "split": "train", "label": 0, "defect": "good", "view": "", "source": f"{n}.png",
                        "width": size, "height": size}
                for name, data in ((f"{key}.png", cv2.imencode(".png", image)[1].tobytes()),
                                   (f"{key}.json", json.dumps(meta).encode()), (f"{key}.cls", str(c).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        name = shard_name("train", s // per_shard)
        (out / name).write_bytes(buf.getvalue())
        entries.append({"name": name, "split": "train", "samples": min(per_shard, samples - s),
                        "bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
    (out / "manifest.json").write_text(json.dumps({"dataset": "bench", "classes": index, "shards": entries,
                                                   "counts": {}, "skipped": [], "builder_version": "1", "args": {}}))
    return out


def raw_rate(build: Path) -> float:
    shards = open_builds([build]).sizes("train")
    start, n = time.perf_counter(), 0
    for url, _ in shards:
        for sample in iter_range(url):
            decode_record(sample)
            n += 1
    return n / (time.perf_counter() - start)


def floor_rate(build: Path) -> float:
    shards = open_builds([build]).sizes("train")
    params, rng = augment_params(**asdict(AugmentConfig())), np.random.default_rng(0)
    start, n = time.perf_counter(), 0
    for url, _ in shards:
        for sample in iter_range(url):
            train_views(decode_record(sample).image, 256, rng, **params)
            n += 1
    return n / (time.perf_counter() - start)


def full_rate(build: Path, normalize: bool) -> float:
    shard_set = open_builds([build])
    labels = load_labels(shard_set, "raw")
    spec = StreamSpec(shard_set.sizes("train"), 16, tuple(batch_layout(16, 8, 1, labels.num_classes)), 1, 1, 0,
                      1, 0, 0, 256, augment_params(**asdict(AugmentConfig())), labels, shuffle_buffer=64)
    start, n = time.perf_counter(), 0
    for batch in TrainStream(spec):
        if normalize:
            normalize_batch(batch["image"]), normalize_batch(batch["augmented"])
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples256", type=int, default=384)
    parser.add_argument("--samples1024", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one loader worker = one core
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'shards':>12} {'raw/s':>8} {'floor/s':>8} {'full/s':>8} {'+norm/s':>8} {'full/raw':>8} "
              f"{'floor/raw':>9} {'full/floor':>10} {'16-core node':>13}")
        for size, count in ((256, args.samples256), (1024, args.samples1024)):
            build = write_build(Path(tmp) / f"px{size}", size, count)
            raw = floor = full = norm = 0.0
            for _ in range(args.repeats):
                raw = max(raw, raw_rate(build))
                floor = max(floor, floor_rate(build))
                full = max(full, full_rate(build, normalize=False))
                norm = max(norm, full_rate(build, normalize=True))
            print(f"{size:>9} px {raw:8.1f} {floor:8.1f} {full:8.1f} {norm:8.1f} {full / raw:8.2f} {floor / raw:9.2f} "
                  f"{full / floor:10.2f} {15 * full:9.0f} /s")
    print("full / raw: goal >= 0.8; floor = raw + the two views; 16-core node = 15 loader workers x full "
          "(one core left to the trainer)")


if __name__ == "__main__":
    main()
