"""BTAD: ``{01,02,03}/train/ok``, ``test/{ok,ko}``, ``ground_truth/ko``; masks matched by stem because
image and mask extensions differ by class (.bmp / .png)."""

from __future__ import annotations

from pathlib import Path

from shard_format.schema import NORMAL_DEFECT
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources.common import empty_layout, list_images, masks_by_stem, rel, require_root, subdirs

EXPECTED = "<class>/train/ok/*, <class>/test/{ok,ko}/* and <class>/ground_truth/ko/* (class 01, 02, 03)"


def scan(root: Path, options: SourceOptions) -> Scan:
    require_root(root, options.dataset)
    classes = [d for d in subdirs(root) if (d / "train" / "ok").is_dir()]
    if not classes:
        raise empty_layout(options.dataset, root, EXPECTED)
    out = Scan()
    for class_dir in classes:
        _scan_class(class_dir, root, options.dataset, out)
    return out


def _scan_class(class_dir: Path, root: Path, dataset: str, out: Scan) -> None:
    name = class_dir.name

    def item(path: Path, split: str, label: int, mask: str = "") -> Item:
        defect = "ko" if label else NORMAL_DEFECT
        return Item(dataset=dataset, class_name=name, group=name, split=split, label=label, defect=defect,
                    stem=path.stem, path=str(path), source=rel(path, root), mask_path=mask)

    out.items.extend(item(p, "train", 0) for p in list_images(class_dir / "train" / "ok"))
    out.items.extend(item(p, "test", 0) for p in list_images(class_dir / "test" / "ok"))
    masks = masks_by_stem(class_dir / "ground_truth" / "ko")
    for path in list_images(class_dir / "test" / "ko"):
        mask = masks.get(path.stem)
        if mask is None:
            out.skipped.append(Skip(rel(path, root), f"mask missing: no file named {path.stem}.* in "
                                                     f"{rel(class_dir / 'ground_truth' / 'ko', root)}"))
            continue
        out.items.append(item(path, "test", 1, str(mask)))
