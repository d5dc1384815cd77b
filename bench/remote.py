"""Reading a build from object storage against reading it from disk, with and without the node cache (one run).

    .venv/bin/python bench/remote.py [--images 1200] [--size 256] [--shard-mb 16] [--epochs 2]

Writes a synthetic build (PNG images, 16 classes, shards of about --shard-mb), starts a SeaweedFS S3 server on
localhost (tests/object_store.py, the one the tests use), uploads the build with shard_tools/upload.py and reads
every training sample through the readers of the runtime (``read_ranges`` with the build's opener), epoch after
epoch, from: the local folder; ``s3://`` with no cache (every epoch fetches every shard, checked); ``s3://``
with ``data.cache_gb`` above the build's size (the first epoch fetches, the next read the kept copies). Prints
samples/s and MB/s per epoch and the ratios to the local read. A server on localhost has no network between
it and the reader: the figures bound the cost of the fetch-and-check path (copies, sha256), not of a WAN.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shard_format.builds import open_builds  # noqa: E402
from shard_format.fetch import ShardCache  # noqa: E402
from shard_format.reader import read_ranges  # noqa: E402
from shard_tools.upload import upload_build  # noqa: E402
from tests.object_store import S3Server, env_client  # noqa: E402
from tests.pipelines.shard_fixtures import write_manifest, write_shard  # noqa: E402


def synthetic_build(out: Path, images: int, size: int, shard_mb: int) -> Path:
    """``images`` noisy PNGs of 16 classes in train shards of about ``shard_mb`` MB."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = [f"c{i:02d}" for i in range(16)]
    index = {f"bench/{c}": i for i, c in enumerate(classes)}
    entries, counts, samples, size_now = [], {"train": {}}, [], 0
    for n in range(images):
        cls = classes[n % 16]
        key = f"bench/{cls}/train/good/{n:06d}"
        png = cv2.imencode(".png", rng.integers(0, 255, (size, size, 3), np.uint8))[1].tobytes()
        meta = (f'{{"dataset": "bench", "class_name": "{cls}", "class_id": {index["bench/" + cls]}, '
                f'"group": "{cls}", "split": "train", "label": 0, "defect": "good", "view": "", '
                f'"source": "{n}.png", "width": {size}, "height": {size}}}').encode()
        cls_member = str(index["bench/" + cls]).encode()
        samples.append([(f"{key}.png", png), (f"{key}.json", meta), (f"{key}.cls", cls_member)])
        counts["train"].setdefault(cls, {"normal": 0, "anomalous": 0})["normal"] += 1
        size_now += len(png)
        if size_now >= shard_mb << 20 or n == images - 1:
            entries.append(write_shard(out, "train", len(entries), samples))
            samples, size_now = [], 0
    return write_manifest(out, "bench", index, {**counts, "val": {}, "test": {}}, entries)


def epoch(build: str, cache: ShardCache) -> tuple[float, int, int]:
    """(seconds, samples, bytes) of reading every training sample once."""
    shard_set = open_builds([build], cache)
    ranges = [_Range(s.url, s.samples) for s in shard_set.shards("train")]
    start, n, size = time.perf_counter(), 0, 0
    for sample in read_ranges(ranges, shard_set.opener()):
        n += 1
        size += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
    return time.perf_counter() - start, n, size


class _Range:
    def __init__(self, url: str, samples: int) -> None:
        self.url, self.start, self.stop, self.total = url, 0, samples, samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--shard-mb", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, S3Server() as server, pytest.MonkeyPatch.context() as mp:
        build = synthetic_build(Path(tmp) / "bench", a.images, a.size, a.shard_mb)
        env_client(mp, server.env())
        server.make_bucket("bench")
        t = time.perf_counter()
        upload_build(build, "s3://bench/shards/bench")
        shards = list(build.glob("*.tar"))
        print(f"build: {a.images} images at {a.size} px, {len(shards)} shards, "
              f"{sum(f.stat().st_size for f in shards) / 2**20:.0f} MB; upload {time.perf_counter() - t:.1f} s")
        sources = {"local": (str(build), ShardCache()),
                   "s3, no cache": ("s3://bench/shards/bench", ShardCache(str(Path(tmp) / "c0"))),
                   "s3, cache": ("s3://bench/shards/bench", ShardCache(str(Path(tmp) / "c1"), 1 << 40))}
        rates: dict[str, list[float]] = {}
        for name, (where, cache) in sources.items():
            for e in range(a.epochs):
                seconds, n, size = epoch(where, cache)
                rates.setdefault(name, []).append(n / seconds)
                print(f"{name:14s} epoch {e + 1}: {n / seconds:8.0f} samples/s {size / seconds / 2**20:7.1f} MB/s")
        for name in list(sources)[1:]:
            ratios = " ".join(f"{r / base:.2f}" for r, base in zip(rates[name], rates["local"]))
            print(f"{name} / local, per epoch: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
