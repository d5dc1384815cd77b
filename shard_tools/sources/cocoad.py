"""COCO-AD from COCO 2017: split k holds out the 20 categories at sorted-id positions [20k, 20k+20).

Train: annotated train2017 images with no held-out instance. Test: every annotated val2017 image,
anomalous when it holds a held-out instance, mask = union of those instances (polygons and RLE, crowd
included). Metrics group everything as "coco"; the contrastive class is the category of the largest
normal instance (the largest instance overall when an image holds only held-out ones).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from shard_format.schema import NORMAL_DEFECT, key_part
from shard_tools.errors import UserError
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources.common import empty_layout, inside, require_root

GROUP = "coco"
SPLITS = {"train": "train2017", "test": "val2017"}
HELD_OUT = 20
EXPECTED = "annotations/instances_{train,val}2017.json and {train,val}2017/ image folders"


def held_out_ids(categories: list[dict], split: int) -> set[int]:
    """Category ids whose index in the sorted id list falls in [20k, 20k+20): indices, not ids."""
    ids = sorted(c["id"] for c in categories)
    return set(ids[HELD_OUT * split: HELD_OUT * (split + 1)])


def scan(root: Path, options: SourceOptions) -> Scan:
    require_root(root, options.dataset)
    if options.cocoad_split not in range(4):
        raise UserError(f"--cocoad-split {options.cocoad_split}: must be 0, 1, 2 or 3")
    paths = {s: root / "annotations" / f"instances_{folder}.json" for s, folder in SPLITS.items()}
    if not any(p.is_file() for p in paths.values()):
        raise empty_layout(options.dataset, root, EXPECTED)
    out = Scan()
    for split, folder in SPLITS.items():
        if not paths[split].is_file():
            raise UserError(f"{paths[split]} is missing; COCO-AD needs both {EXPECTED}")
        _scan_split(_load(paths[split]), split, root / folder, root, options, out, paths[split])
    return out


def _load(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        data["images"], data["annotations"], data["categories"]  # noqa: B018 (shape check)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a COCO instances file ({exc.__class__.__name__}: {exc})") from None
    return data


def _scan_split(data: dict, split: str, image_dir: Path, root: Path, options: SourceOptions, out: Scan,
                where: Path) -> None:
    held = held_out_ids(data["categories"], options.cocoad_split)
    names = {c["id"]: key_part(c["name"]) for c in data["categories"]}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for image in sorted(data["images"], key=lambda im: im["file_name"]):
        anns = by_image.get(image["id"])
        if not anns:
            continue  # images without annotations are not part of the benchmark
        inside(image_dir, str(image["file_name"]), root, f"{where} (image id {image['id']})")
        item = _image_item(image, anns, held, names, split, image_dir, root, options.dataset, out)
        if item is not None:
            out.items.append(item)


def _largest(anns: list[dict]) -> dict:
    return max(anns, key=lambda a: (a.get("area", 0), -a["id"]))


def _image_item(image: dict, anns: list[dict], held: set[int], names: dict[int, str], split: str,
                image_dir: Path, root: Path, dataset: str, out: Scan) -> Item | None:
    anomalous = [a for a in anns if a["category_id"] in held]
    normal = [a for a in anns if a["category_id"] not in held]
    if split == "train" and anomalous:
        return None  # by definition not a training image of this split
    path = image_dir / image["file_name"]
    source = path.relative_to(root).as_posix()
    if not path.is_file():
        out.skipped.append(Skip(source, "image missing (listed in the annotations)"))
        return None
    class_name = names[_largest(normal or anns)["category_id"]]
    label = int(bool(anomalous))
    defect = names[_largest(anomalous)["category_id"]] if label else NORMAL_DEFECT
    return Item(dataset=dataset, class_name=class_name, group=GROUP, split=split, label=label, defect=defect,
                stem=path.stem, path=str(path), source=source,
                polygons=tuple(a["segmentation"] for a in sorted(anomalous, key=lambda a: a["id"])))
