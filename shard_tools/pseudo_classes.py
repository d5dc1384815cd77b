"""Pseudo classes: K-means on frozen ImageNet features, for training CCL without class labels (Table 3).

    python shard_tools/pseudo_classes.py --shards data/shards/mvtec --k 30 \
        [--teacher resnet18.tv_in1k|mobilenetv2_100|wide_resnet50_2] [--level -1] \
        [--pretrained hub|offline|none|PATH] [--image-size 256] [--batch-size 32] [--out pseudo_classes.json] [--seed 0]

The encoder is the paper's by default (Section 4.3, Table 3: "a ResNet-18 pretrained on ImageNet ...
features from the final layer"): torchvision's ImageNet ResNet-18 (timm ``resnet18.tv_in1k``), its
last stage (``layer4``, 512 channels). ``--teacher`` / ``--level`` pick another timm encoder or stage
(e.g. the training teacher: ``--teacher wide_resnet50_2 --level 3``). Every train and val image of the
builds is embedded (global average pool of that stage, L2-normalised); K-means is fitted on the train
images only and the val images are assigned to the nearest centre, so validation can use the same
pseudo labels without shaping them.

Output (the trainer reads ``k`` and ``labels``; ``data.class_source=pseudo``, ``data.pseudo_file``):

    {"k": K, "teacher": ..., "pretrained": ..., "weights": "resnet18.tv_in1k", "layer": "layer4",
     "feature_dim": 512, "labels": {sample_key: pseudo_id}, "v_measure": ..., "adjusted_rand": ..., ...}

``weights`` and ``layer`` say what was actually used (``random`` for ``--pretrained none``).

``--out NAME`` (no directory part, default ``pseudo_classes.json``) writes one file beside *each*
build, holding only that build's keys; the clustering is joint over all builds, so ids are shared.
``--out PATH/FILE.json`` writes one file with every key. V-measure and adjusted Rand index compare
the pseudo classes with the raw classes of the train images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccl.data.transforms import normalize, resize_image  # noqa: E402
from ccl.models import build_teacher  # noqa: E402
from shard_format.atomic import write_atomic  # noqa: E402
from shard_format.builds import open_builds  # noqa: E402
from shard_format.errors import ShardError  # noqa: E402
from shard_format.fetch import ShardOpener  # noqa: E402
from shard_format.location import is_remote, join, write_small  # noqa: E402
from shard_format.manifest import ShardInfo  # noqa: E402
from shard_format.reader import iter_range  # noqa: E402
from shard_format.record import decode_record  # noqa: E402
from shard_format.schema import PSEUDO_CLASSES_NAME  # noqa: E402

DEFAULT_ENCODER = "resnet18.tv_in1k"  # the paper's ImageNet ResNet-18 (torchvision's weights)
LAST_LEVEL = -1  # timm features_only index of the final stage (layer4 for ResNets)
SPLITS_EMBEDDED = ("train", "val")
N_INIT = 10  # K-means restarts; fixed so a seed gives one answer


# ---------------------------------------------------------------- teacher


def load_teacher(name: str = DEFAULT_ENCODER, pretrained: str = "hub", level: int = LAST_LEVEL) -> torch.nn.Module:
    """A frozen timm encoder (``ccl.models.build_teacher``) returning only feature level ``level``.

    ``pretrained``: hub | none | offline (mobilenetv2_100 from the offline package) | a .pth / .safetensors.
    """
    return build_teacher(name, pretrained, out_indices=(level,))


# ---------------------------------------------------------------- features


@dataclass(frozen=True)
class Embedded:
    keys: list[str]
    classes: list[str]  # raw "dataset/class"
    splits: list[str]
    builds: list[str]
    features: np.ndarray  # (N, C) float32, rows L2-normalised


def iter_samples(shards: Sequence[ShardInfo]) -> Iterator[dict[str, Any]]:
    """Raw samples of ``shards`` in order, every one the manifest promises (a short shard is an error).

    Through ``shard_format.reader``: a manifest entry is a file of its build, never a URL that webdataset
    would run through a shell (``pipe:``); a remote one is fetched and checked against its entry first.
    """
    for shard in shards:
        opener = ShardOpener({shard.url: (shard.bytes, shard.sha256)} if is_remote(shard.url) else {})
        yield from iter_range(shard.url, 0, shard.samples, opener=opener)


def _prepare(sample: dict[str, Any], size: int) -> tuple[str, str, str, str, torch.Tensor]:
    record = decode_record(sample)
    tensor = normalize(resize_image(record.image, size))
    return record.key, record.meta.class_key, record.meta.split, sample["__url__"], tensor


@torch.no_grad()
def embed(shards: Sequence[ShardInfo], model: torch.nn.Module, image_size: int = 256, batch_size: int = 32,
          device: str = "cpu", workers: int = 4) -> Embedded:
    """Pooled, L2-normalised last-level features of every sample in ``shards``, with a progress bar."""
    build_of = {s.url: s.build for s in shards}
    rows, feats = [], []
    model = model.to(device)
    bar = tqdm(total=sum(s.samples for s in shards), desc="embedding", unit="img")
    # Decoding and resizing release the GIL (OpenCV), so threads keep the encoder fed.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for chunk in _chunks(iter_samples(shards), batch_size):
            prepared = list(pool.map(lambda s: _prepare(s, image_size), chunk))
            batch = torch.stack([p[4] for p in prepared]).to(device)
            pooled = model(batch)[-1].float().mean(dim=(2, 3))
            feats.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
            rows += [(key, cls, split, build_of[url]) for key, cls, split, url, _ in prepared]
            bar.update(len(prepared))
    bar.close()
    if not rows:
        raise ValueError(f"no samples in {len(shards)} shard(s)")
    keys, classes, splits, builds = (list(col) for col in zip(*rows, strict=True))
    return Embedded(keys, classes, splits, builds, np.concatenate(feats))


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- clustering


def cluster(emb: Embedded, k: int, seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """K-means fitted on the train rows; every row gets its nearest centre. Returns (ids, scores)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, v_measure_score

    train = np.array([s == "train" for s in emb.splits])
    if train.sum() < k:
        raise ValueError(f"K = {k} pseudo classes need at least {k} train images, the builds have {train.sum()}")
    kmeans = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(emb.features[train])
    ids = kmeans.predict(emb.features)
    raw = np.array(emb.classes)[train]
    scores = {"v_measure": float(v_measure_score(raw, ids[train])),
              "adjusted_rand": float(adjusted_rand_score(raw, ids[train]))}
    return ids, scores


def pseudo_classes(builds: Sequence[str | Path], k: int, teacher: str = DEFAULT_ENCODER, pretrained: str = "hub",
                   image_size: int = 256, batch_size: int = 32, seed: int = 0, device: str = "cpu",
                   workers: int = 4, level: int = LAST_LEVEL) -> dict[str, Any]:
    """The sidecar content for ``builds``: pseudo ids of every train and val sample, plus agreement scores."""
    shard_set = open_builds([str(b) for b in builds])
    shards = [s for split in SPLITS_EMBEDDED for s in shard_set.shards(split)]
    if not shard_set.shards("train"):
        raise ValueError(f"builds {list(builds)} have no train shards")
    torch.manual_seed(seed)  # a random teacher (--pretrained none) is then reproducible
    model = load_teacher(teacher, pretrained, level)
    emb = embed(shards, model, image_size, batch_size, device, workers)
    ids, scores = cluster(emb, k, seed)
    return {
        "k": k, "teacher": teacher, "pretrained": pretrained, "image_size": image_size, "seed": seed,
        "weights": model.weights, "layer": model.layers[0], "level": level, "feature_dim": model.channels[0],
        "labels": {key: int(i) for key, i in zip(emb.keys, ids, strict=True)},
        **scores,
        "counts": {split: emb.splits.count(split) for split in SPLITS_EMBEDDED},
        "build_of": dict(zip(emb.keys, emb.builds, strict=True)),
    }


def write_sidecars(result: Mapping[str, Any], builds: Sequence[str | Path],
                   out: str = PSEUDO_CLASSES_NAME) -> list[str]:
    """A bare name: one file per build with its own keys; a path with a directory: one file, all keys."""
    meta = {k: v for k, v in result.items() if k not in ("labels", "build_of")}
    if os.sep in out or "/" in out:
        targets = {out: None}
    else:
        targets = {join(str(b), out): str(b) for b in builds}
    written = []
    for path, build in targets.items():
        labels = {key: i for key, i in result["labels"].items()
                  if build is None or _same_build(result["build_of"][key], build)}
        content = json.dumps({**meta, "builds": [str(b) for b in builds], "labels": labels}, indent=1, sort_keys=True)
        if is_remote(path):
            write_small(path, content.encode())
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(path), content)
        written.append(path)
    return written


def _same_build(a: str, b: str) -> bool:
    return a == b or not (is_remote(a) or is_remote(b)) and Path(a) == Path(b)


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (its defaults are the paper's encoder and stage)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", nargs="+", action="extend", required=True,
                   help="shard builds (folders or s3:// gs:// https:// prefixes)")
    p.add_argument("--k", type=int, required=True, help="number of pseudo classes")
    p.add_argument("--teacher", default=DEFAULT_ENCODER, help="timm model with features_only (default: the paper's)")
    p.add_argument("--level", type=int, default=LAST_LEVEL, help="its feature level (default -1: the last stage)")
    p.add_argument("--pretrained", default="hub", help="hub | offline | none | PATH")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=PSEUDO_CLASSES_NAME, help="file name beside each build, or one path")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, cluster, write the sidecar(s), print the agreement with the raw classes."""
    a = parse_args(argv)
    try:
        result = pseudo_classes(a.shards, a.k, a.teacher, a.pretrained, a.image_size, a.batch_size, a.seed,
                                a.device, a.workers, a.level)
    except (ShardError, ValueError, FileNotFoundError) as err:  # bad build, corrupt sample, bad k or teacher
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in write_sidecars(result, a.shards, a.out):
        print(f"wrote {path}")
    print(f"K = {a.k}, {result['counts']['train']} train / {result['counts']['val']} val images, "
          f"{result['weights']} {result['layer']} ({result['feature_dim']} channels) pooled: "
          f"V-measure {result['v_measure']:.4f}, adjusted Rand {result['adjusted_rand']:.4f} vs raw classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
