"""Saved anomaly maps of any method, for the standalone evaluation (``launch/evaluate.py --maps``).

One map file per image (.npy or an image file) under a maps folder, its mask (if any) at the same
relative path under a masks folder; read one at a time, so the evaluation runs in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from pipelines.base.exits import InputError

MAP_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".npy", ".bmp", ".tif", ".tiff", ".jpg")


def read_array(path: Path) -> np.ndarray:
    """A 2-D array from .npy or an image file (16-bit PNGs keep their values); InputError naming the file."""
    try:
        array = np.load(path) if path.suffix == ".npy" else cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    if array is None:
        raise InputError(f"{path}: cannot read (not an image)")
    array = np.squeeze(np.asarray(array))
    if array.ndim == 3:  # a colour-saved map or mask: its first channel
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2-D map, got shape {array.shape}")
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
            raise InputError(f"{path}: map {amap.shape} and mask {mask_path} {mask.shape} differ in size")
        where = f"{path}" + (f" (mask {mask_path})" if mask_path is not None else "")
        yield str(rel.with_suffix("")), group, amap, mask, where
