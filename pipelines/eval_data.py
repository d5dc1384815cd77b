"""The test-set loader of the evaluator: every test sample scored exactly once over ranks and workers.

The test shards of all builds (in manifest order, optionally cut to the first ``max_images``
samples) form one sequence that ``data_plan.exact_segments`` cuts into ``ranks x workers``
near-equal contiguous ranges at sample level: no padding, no drops, whatever the numbers of
shards, ranks and workers (a shard may be shared by two workers; a slot may be empty when
there are fewer samples than slots). Each rank builds its own loader, so it must NOT go
through ``accelerator.prepare`` (that would split it again).

A sample that does not decode, and the samples of a shard that is missing or turns out
truncated, come out as error items that the evaluator reports; it then compares the samples
scored with the manifests' count and fails unless ``eval.allow_partial``.

``iter_map_files`` reads saved anomaly maps of any method for the standalone evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ccl.data.transforms import eval_view
from pipelines.data_plan import Segment, exact_segments
from pipelines.distributed import loader_worker_init
from shard_format.builds import ShardSet
from shard_format.errors import ShardError
from shard_format.reader import iter_range
from shard_format.record import decode_record


def group_name(dataset: str, group: str) -> str:
    """Metric group of a record: its RecordMeta.group prefixed with the dataset ("mvtec/bottle")."""
    return f"{dataset}/{group}"


def eval_plan(shard_set: ShardSet, ranks: int, workers: int, max_images: int = 0) -> list[list[Segment]]:
    """``plan[rank][worker]``: the contiguous sample ranges each loader worker reads."""
    shards = [(s.url, s.samples) for s in shard_set.shards("test")]
    if not shards:
        raise ShardError(f"no test shards in {', '.join(shard_set.builds)}")
    if max_images > 0:
        cut, left = [], max_images
        for url, n in shards:
            cut.append((url, min(n, left)))
            left -= cut[-1][1]
        shards = [s for s in cut if s[1] > 0]
    return exact_segments(shards, ranks, workers)


def class_test_count(shard_set: ShardSet, classes: tuple[str, ...] = ()) -> int:
    """Test samples of ``classes`` ("dataset/class", all when empty), from the manifests' counts."""
    if not classes:
        return shard_set.count("test")
    unknown = sorted(set(classes) - set(shard_set.class_index))
    if unknown:
        raise ShardError(f"eval.classes {unknown} are not classes of {', '.join(shard_set.builds)} "
                         f"(classes: {', '.join(shard_set.class_names)})")
    total = 0
    for manifest in shard_set.manifests:
        for name, counts in manifest.get("counts", {}).get("test", {}).items():
            if f"{manifest['dataset']}/{name}" in classes:
                total += counts["normal"] + counts["anomalous"]
    return total


def decode_item(raw: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Raw tar sample -> model input and ground truth; ``{"error": ...}`` when it does not decode.

    Normal samples have no mask member: their pixels are all normal (a zero mask). An
    anomalous sample without a mask is scored at image level only (mask None).
    """
    try:
        rec = decode_record(raw)
    except ShardError as err:
        return {"error": str(err), "key": raw.get("__key__", "?")}
    mask = rec.mask
    if mask is None and rec.meta.label == 0:
        mask = rec.image[..., 0] < 0  # all False, the image's size
    image, mask_t = eval_view(rec.image, mask, image_size)
    return {"key": rec.key, "group": group_name(rec.meta.dataset, rec.meta.group), "label": rec.meta.label,
            "image": image, "mask": mask_t}


class EvalSamples(IterableDataset):
    """The samples of one rank; each DataLoader worker reads its own segment of the plan."""

    def __init__(self, segments: list[Segment], image_size: int, classes: tuple[str, ...] = ()) -> None:
        self.segments, self.image_size = segments, image_size
        self.prefixes = tuple(f"{c}/" for c in classes)  # keys start with "dataset/class/"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.segments if info is None else self.segments[info.id::info.num_workers]
        for segment in mine:
            for r in segment.ranges:
                try:
                    for raw in iter_range(r.url, r.start, r.stop):
                        if self.prefixes and not str(raw.get("__key__", "")).startswith(self.prefixes):
                            continue  # another class (decided from the key, before decoding)
                        yield decode_item(raw, self.image_size)
                except ShardError as err:  # missing or truncated shard: report, go on with the next range
                    yield {"error": str(err), "key": r.url, "lost": True}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; keep the error messages beside them."""
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"errors": [it["error"] for it in items if "error" in it], "keys": [], "size": len(good)}
    if good:
        size = good[0]["image"].shape[-2:]
        batch.update(
            images=torch.stack([it["image"] for it in good]),
            masks=torch.stack([it["mask"] if it["mask"] is not None else torch.zeros(size, dtype=torch.bool)
                               for it in good]),
            has_mask=torch.tensor([it["mask"] is not None for it in good]),
            labels=torch.tensor([it["label"] for it in good]),
            groups=[it["group"] for it in good],
            keys=[it["key"] for it in good],
        )
    return batch


def eval_loader(shard_set: ShardSet, image_size: int, batch_size: int, num_workers: int,
                rank: int = 0, world: int = 1, max_images: int = 0, classes: tuple[str, ...] = ()) -> DataLoader:
    """This rank's test loader (not to be prepared by Accelerate); ``classes`` keeps only those classes."""
    workers = max(1, num_workers)
    plan = eval_plan(shard_set, world, workers, max_images)
    dataset = EvalSamples(plan[rank], image_size, tuple(classes))
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, worker_init_fn=loader_worker_init)


# ---------------------------------------------------------------- saved maps of any method

MAP_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".npy", ".bmp", ".tif", ".tiff", ".jpg")


def read_array(path: Path) -> np.ndarray:
    """A 2-D array from .npy or an image file (16-bit PNGs keep their values); ValueError naming the file."""
    try:
        array = np.load(path) if path.suffix == ".npy" else cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from None
    if array is None:
        raise ValueError(f"{path}: cannot read (not an image)")
    array = np.squeeze(np.asarray(array))
    if array.ndim == 3:  # a colour-saved map or mask: its first channel
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D map, got shape {array.shape}")
    return array


def find_mask(masks_dir: Path | None, rel: Path) -> Path | None:
    """The mask of map ``rel``: same relative path and stem (or stem + "_mask"), any mask extension."""
    if masks_dir is None:
        return None
    for stem in (rel.stem, rel.stem + "_mask"):
        for ext in MASK_EXTENSIONS:
            path = masks_dir / rel.parent / (stem + ext)
            if path.is_file():
                return path
    return None


def list_map_files(maps_dir: str | Path) -> list[Path]:
    """Every map file under ``maps_dir``, sorted."""
    root = Path(maps_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"maps directory {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MAP_EXTENSIONS and p.is_file())


def iter_map_files(maps_dir: str | Path, masks_dir: str | Path | None,
                   group_depth: int = 1) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """(key, group, map float32, mask bool, description) per map file, in sorted order.

    The group is the first ``group_depth`` folders of the map's relative path ("default" for
    files above that depth). A map without a mask file is a normal image (mask all False);
    mask pixels > 0 are anomalous.
    """
    root = Path(maps_dir)
    masks_root = Path(masks_dir) if masks_dir is not None else None
    if masks_root is not None and not masks_root.is_dir():
        raise FileNotFoundError(f"masks directory {masks_root} does not exist")
    for path in list_map_files(root):
        rel = path.relative_to(root)
        group = "/".join(rel.parts[:group_depth]) if len(rel.parts) > group_depth else "default"
        amap = read_array(path).astype(np.float32)
        mask_path = find_mask(masks_root, rel)
        mask = read_array(mask_path) > 0 if mask_path is not None else np.zeros(amap.shape, bool)
        if mask.shape != amap.shape:
            raise ValueError(f"{path}: map {amap.shape} and mask {mask_path} {mask.shape} differ in size")
        where = f"{path}" + (f" (mask {mask_path})" if mask_path is not None else "")
        yield str(rel.with_suffix("")), group, amap, mask, where
