"""MVTec AD layout (also ``folder``, ``demo`` and VisA's reorganised 1cls tree).

``<cls>/train/good/*``, ``<cls>/test/{good,<defect>}/*``, ``<cls>/ground_truth/<defect>/<stem>_mask.png``.
Masks are paired by name, never by sorted position.
"""

from __future__ import annotations

from pathlib import Path

from shard_format.schema import NORMAL_DEFECT
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources.common import empty_layout, list_images, masks_by_stem, rel, require_root, subdirs

EXPECTED = "<class>/train/good/*.png, <class>/test/{good,<defect>}/*.png and " \
           "<class>/ground_truth/<defect>/<stem>_mask.png"


def class_dirs(base: Path) -> list[Path]:
    return [d for d in subdirs(base) if (d / "train" / "good").is_dir()]


# Datasets whose anomalies may be image-level (no mask): a user's own folder, and the inspect benchmark's
# solar cells (real defects labelled per image).
MASK_OPTIONAL = ("folder", "inspect")


def scan(root: Path, options: SourceOptions) -> Scan:
    """MVTec AD; for ``folder`` (and the generated ``inspect``) anomalies without a mask stay in as image-level
    samples."""
    require_root(root, options.dataset)
    classes = class_dirs(root)
    if not classes:
        raise empty_layout(options.dataset, root, EXPECTED)
    out = Scan()
    for class_dir in classes:
        scan_class(class_dir, root, options.dataset, out, mask_optional=options.dataset in MASK_OPTIONAL)
    return out


def scan_class(class_dir: Path, root: Path, dataset: str, out: Scan, mask_optional: bool = False) -> None:
    """Append one class's items (and skips) to ``out``; paths in records are relative to ``root``."""
    name = class_dir.name

    def item(path: Path, split: str, defect: str, mask: str = "") -> Item:
        label = 0 if defect == NORMAL_DEFECT else 1
        return Item(dataset=dataset, class_name=name, group=name, split=split, label=label, defect=defect,
                    stem=path.stem, path=str(path), source=rel(path, root), mask_path=mask,
                    mask_optional=mask_optional)

    out.items.extend(item(p, "train", NORMAL_DEFECT) for p in list_images(class_dir / "train" / "good"))
    for defect_dir in subdirs(class_dir / "test"):
        defect = defect_dir.name
        if defect == NORMAL_DEFECT:
            out.items.extend(item(p, "test", defect) for p in list_images(defect_dir))
            continue
        masks = masks_by_stem(class_dir / "ground_truth" / defect)
        for path in list_images(defect_dir):
            mask = masks.get(path.stem)
            if mask is None and not mask_optional:
                expected = class_dir / "ground_truth" / defect / f"{path.stem}_mask.png"
                out.skipped.append(Skip(rel(path, root), f"mask missing: expected {rel(expected, root)}"))
                continue
            out.items.append(item(path, "test", defect, str(mask) if mask else ""))
