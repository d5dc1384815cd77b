"""Tiny test-split shard builds with masks (plain tarfile; the layout of shard_format/schema.py).

    build = write_test_build(tmp / "mvtec", "mvtec", ["bottle", "cable"], shard_sizes=[5, 3, 2])
    keys = tar_keys(build, "test")   # read back independently of the evaluator

Every other sample is anomalous: a bright square in the image and the same square in its
``mask.png``; normal samples carry no mask (as in real builds).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shard_format.schema import make_key, shard_name


def sample_members(dataset: str, cls: str, class_id: int, split: str, n: int, size: int,
                   rng: np.random.Generator, anomalous: bool, corrupt: bool = False) -> list[tuple[str, bytes]]:
    """Tar members of one sample: image, mask (anomalous only), json, cls."""
    defect = "scratch" if anomalous else "good"
    key = make_key(dataset, cls, split, defect, f"img{n:05d}")
    image = np.clip(rng.normal(90 + 30 * class_id, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    members = []
    if anomalous:
        mask = np.zeros((size, size), np.uint8)
        h, w = rng.integers(1, max(2, size // 3), size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y:y + h, x:x + w] = 255
        image[mask > 0] = 250
        members.append((f"{key}.mask.png", cv2.imencode(".png", mask)[1].tobytes()))
    png = b"not a png" if corrupt else cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    meta = {"dataset": dataset, "class_name": cls, "class_id": class_id, "group": cls, "split": split,
            "label": int(anomalous), "defect": defect, "view": "", "source": f"{cls}/{defect}/{n}.png",
            "width": size, "height": size}
    return [(f"{key}.png", png), *members, (f"{key}.json", json.dumps(meta).encode()),
            (f"{key}.cls", str(class_id).encode())]


def write_test_build(out: str | Path, dataset: str, classes: Sequence[str], shard_sizes: Sequence[int],
                     size: int = 32, seed: int = 0, corrupt: Sequence[int] = (), split: str = "test") -> Path:
    """A build of ``split`` shards with ``shard_sizes`` samples; sample numbers in ``corrupt`` get undecodable
    images."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = {f"{dataset}/{c}": i for i, c in enumerate(sorted(classes))}
    entries, counts, n = [], {}, 0
    for s, count in enumerate(shard_sizes):
        samples = []
        for _ in range(count):
            cls, anomalous = classes[n % len(classes)], (n // len(classes)) % 2 == 1
            samples.append(sample_members(dataset, cls, index[f"{dataset}/{cls}"], split, n, size, rng,
                                          anomalous, corrupt=n in corrupt))
            kind = "anomalous" if anomalous else "normal"
            counts.setdefault(split, {}).setdefault(cls, {"normal": 0, "anomalous": 0})[kind] += 1
            n += 1
        entries.append(write_shard(out, split, s, samples))
    return write_manifest(out, dataset, index, counts, entries)


def write_shard(out: Path, split: str, number: int, samples: list[list[tuple[str, bytes]]]) -> dict:
    """``{split}-NNNNNN.tar`` of ``samples``; returns its manifest entry."""
    name = shard_name(split, number)
    data = tar_bytes(samples)
    (out / name).write_bytes(data)
    return {"name": name, "split": split, "samples": len(samples), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(out: Path, dataset: str, index: dict, counts: dict, entries: list[dict]) -> Path:
    """The build's manifest.json (the fields shard_tools writes); returns the build directory."""
    manifest = {"builder_version": "1", "dataset": dataset, "args": {"fixture": True}, "classes": index,
                "counts": counts, "shards": entries, "skipped": []}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def tar_bytes(samples: list[list[tuple[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_keys(build: str | Path, split: str = "test") -> list[str]:
    """Every sample key of a build's split, read straight from the tars."""
    keys: list[str] = []
    for path in sorted(Path(build).glob(f"{split}-*.tar")):
        with tarfile.open(path) as tar:
            keys += sorted({m.name.rpartition("/")[0] + "/" + m.name.rpartition("/")[2].split(".")[0]
                            for m in tar.getmembers()})
    return keys


def tiny_export(out: str | Path, image_size: int = 64, seed: int = 0, overrides: Sequence[str] = (),
                class_index: dict[str, int] | None = None) -> Path:
    """An export of an untrained RDCCL on resnet18 (random weights, maps vary per image); with ``class_index``
    a class-conditioned one whose per-class modulation is random too (each class scores differently).

    The teacher is not part of an export (it is rebuilt from ``model.pretrained``), so its random
    weights are saved as a local weights file: every process that loads the export gets the same model.
    ``eval.bins=16384``: with a few hundred anomalous pixels, F1max at the top of the ranking moves by
    whole pixels, so the histograms need the finer grid to stay within 1e-3 of the exact values.
    """
    import timm
    import torch

    from pipelines.base.config import load_config
    from pipelines.base.model import build_model, save_export

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    teacher = out.parent / "resnet18_teacher.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), teacher)
    conditioned = ["model.class_conditioned=true"] if class_index is not None else []
    cfg = load_config(None, ["model.teacher=resnet18", f"model.pretrained={teacher}", f"data.image_size={image_size}",
                             "eval.batch_size=4", "eval.num_workers=0", "eval.bins=16384", *overrides, *conditioned])
    if class_index is None:
        return save_export(build_model(cfg).eval(), cfg, out, {"step": 0})
    model = build_model(cfg, class_index=class_index).eval()
    with torch.no_grad():
        for table in (model.condition.scale, model.condition.shift):
            table.weight.normal_(0, 0.5)
    return save_export(model, cfg, out, {"step": 0, "class_index": class_index})


def eval_view(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[Any, Any]:
    """What evaluation feeds the model, composed here from the library's steps: the resized, normalised
    image (3, S, S) and the resized bool mask (S, S) or None."""
    import torch

    from ccl.data.image_ops import resize_image, resize_mask
    from ccl.data.transforms import normalize

    tensor = normalize(resize_image(image, size))
    return tensor, torch.from_numpy(resize_mask(mask, size)) if mask is not None else None
