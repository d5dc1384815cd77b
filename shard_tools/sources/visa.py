"""VisA: the raw tree split by ``split_csv/1cls.csv``, or the reorganised ``1cls/<cls>/...`` MVTec-like tree.

Mask pixels are defect ids (0 background, 1..N); every mask is binarised != 0 downstream.
"""

from __future__ import annotations

import csv
from pathlib import Path

from shard_format.schema import NORMAL_DEFECT
from shard_tools.errors import UserError
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources import mvtec
from shard_tools.sources.common import empty_layout, inside, require_root

CSV_PATH = "split_csv/1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
EXPECTED = (f"{CSV_PATH} (columns {','.join(CSV_COLUMNS)}) with <class>/Data/Images/{{Normal,Anomaly}}/ and "
            "<class>/Data/Masks/Anomaly/, or the reorganised 1cls/<class>/{train/good,test/good,test/bad,"
            "ground_truth/bad}")


def scan(root: Path, options: SourceOptions) -> Scan:
    require_root(root, options.dataset)
    if (root / CSV_PATH).is_file():
        return _scan_csv(root, options.dataset)
    for base in (root / "1cls", root):
        classes = mvtec.class_dirs(base)
        if classes:
            out = Scan()
            for class_dir in classes:
                mvtec.scan_class(class_dir, root, options.dataset, out)
            return out
    raise empty_layout(options.dataset, root, EXPECTED)


def _scan_csv(root: Path, dataset: str) -> Scan:
    path = root / CSV_PATH
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in CSV_COLUMNS):
        raise UserError(f"{path}: expected a header {','.join(CSV_COLUMNS)} and at least one row")
    out = Scan()
    for line, row in enumerate(rows, start=2):
        item = _row_item(root, dataset, row, f"{path}:{line}", out)
        if item is not None:
            out.items.append(item)
    return out


def _row_item(root: Path, dataset: str, row: dict, where: str, out: Scan) -> Item | None:
    split, label_text = row["split"].strip(), row["label"].strip().lower()
    if split not in ("train", "test") or label_text not in ("normal", "anomaly"):
        raise UserError(f"{where}: split must be train|test and label normal|anomaly, got {split!r}, "
                        f"{row['label']!r}")
    image_rel, mask_rel = row["image"].strip(), (row["mask"] or "").strip()
    label = int(label_text == "anomaly")
    image = inside(root, image_rel, root, where)
    if mask_rel:
        inside(root, mask_rel, root, where)
    if not image.is_file():
        out.skipped.append(Skip(image_rel, f"image missing (listed in {CSV_PATH})"))
        return None
    if label and (not mask_rel or not (root / mask_rel).is_file()):
        out.skipped.append(Skip(image_rel, f"mask missing: expected {mask_rel or 'a mask path in ' + CSV_PATH}"))
        return None
    name = row["object"].strip()
    return Item(dataset=dataset, class_name=name, group=name, split=split, label=label,
                defect="bad" if label else NORMAL_DEFECT, stem=image.stem, path=str(image), source=image_rel,
                mask_path=str(root / mask_rel) if label else "")
