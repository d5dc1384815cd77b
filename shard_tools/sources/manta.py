"""MANTA: ``<domain>/<cls>/{train,test-pixel}/{good,<defect>...,mask}/``, five views tiled horizontally.

Each image becomes one item with ``tiles=5``; the worker cuts image and mask into five equal-width views
and labels each view from its own mask crop (an empty crop is a normal view). One ``mask/`` folder per
phase: paired by stem when the names match, else by sorted order (with a warning).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from shard_format.schema import NORMAL_DEFECT
from shard_tools.errors import warn
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources.common import empty_layout, list_images, masks_by_stem, rel, require_root, subdirs

VIEWS = 5
PHASES = {"train": "train", "test-pixel": "test"}
MASK_DIR = "mask"
EXPECTED = "<domain>/<class>/{train,test-pixel}/{good,<defect>...,mask}/ (5 views tiled horizontally)"


def scan(root: Path, options: SourceOptions) -> Scan:
    require_root(root, options.dataset)
    classes = [c for d in subdirs(root) for c in subdirs(d) if any((c / p).is_dir() for p in PHASES)]
    if not classes:
        raise empty_layout(options.dataset, root, EXPECTED)
    clashes = {n for n, k in Counter(c.name for c in classes).items() if k > 1}
    out = Scan()
    for class_dir in classes:
        # Class names are unique across domains in MANTA; should two clash, the domain keeps them apart.
        name = f"{class_dir.parent.name}-{class_dir.name}" if class_dir.name in clashes else class_dir.name
        for phase, split in PHASES.items():
            _scan_phase(class_dir / phase, split, name, root, options.dataset, out)
    return out


def _scan_phase(phase_dir: Path, split: str, name: str, root: Path, dataset: str, out: Scan) -> None:
    def item(path: Path, defect: str, mask: str = "") -> Item:
        return Item(dataset=dataset, class_name=name, group=name, split=split,
                    label=0 if defect == NORMAL_DEFECT else 1, defect=defect, stem=path.stem, path=str(path),
                    source=rel(path, root), mask_path=mask, tiles=VIEWS)

    defect_dirs = [d for d in subdirs(phase_dir) if d.name not in (NORMAL_DEFECT, MASK_DIR)]
    out.items.extend(item(p, NORMAL_DEFECT) for p in list_images(phase_dir / NORMAL_DEFECT))
    if split == "train":
        if defect_dirs:
            warn(f"{rel(phase_dir, root)}: defect folders in a training phase are ignored")
        return
    anomalous = [(d.name, p) for d in defect_dirs for p in list_images(d)]
    for (defect, path), mask in zip(anomalous, _pair_masks(anomalous, phase_dir / MASK_DIR, root), strict=True):
        if mask is None:
            out.skipped.append(Skip(rel(path, root), f"mask missing: no {path.stem}.* in "
                                                     f"{rel(phase_dir / MASK_DIR, root)}"))
        else:
            out.items.append(item(path, defect, str(mask)))


def _pair_masks(anomalous: list[tuple[str, Path]], mask_dir: Path, root: Path) -> list[Path | None]:
    by_stem = masks_by_stem(mask_dir)
    paired = [by_stem.get(p.stem) for _, p in anomalous]
    stems = [p.stem for _, p in anomalous]
    if None not in paired and len(set(stems)) == len(stems):
        return paired
    masks = list_images(mask_dir)
    if len(masks) == len(anomalous):
        # ``anomalous`` is already sorted by (defect folder, file name), as a sorted listing would be.
        warn(f"{rel(mask_dir, root)}: mask names do not match the image names; pairing by sorted order")
        return list(masks)
    return paired
