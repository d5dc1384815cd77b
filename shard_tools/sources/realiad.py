"""Real-IAD: images under ``realiad_<res>/<cat>/``, split by the per-category jsons.

Json folders: ``realiad_jsons/`` (files directly or one level deeper in ``realiad_jsons/realiad_jsons/``),
``realiad_jsons_sv/``, ``realiad_jsons_fuiad_*``. An entry is normal when its anomaly_class is the
json's normal class or it has no mask, so NG-folder views the json marks OK are normal samples.
The five views of one sample share its folder (``OK/S0001``): the planner draws the val split by sample.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shard_format.schema import NORMAL_DEFECT
from shard_tools.errors import UserError
from shard_tools.items import Item, Scan, Skip, SourceOptions
from shard_tools.sources.common import empty_layout, inside, require_root

RESOLUTIONS = ("256", "512", "1024", "raw")
JSON_DIRS = ("realiad_jsons", "realiad_jsons_sv")
EXPECTED = ("realiad_{256,512,1024,raw}/<cat>/{OK,NG/<defect>}/S####/*.jpg and "
            "realiad_jsons/<cat>.json (or realiad_jsons/realiad_jsons/, realiad_jsons_sv/, realiad_jsons_fuiad_*)")
_VIEW_RE = re.compile(r"_(C\d+)(?:_|$)")


def scan(root: Path, options: SourceOptions) -> Scan:
    require_root(root, options.dataset)
    image_root = root / f"realiad_{resolution(root, options)}"
    out = Scan()
    for path in json_files(root, options.realiad_jsons):
        _scan_json(path, image_root, root, options.dataset, out)
    return out


def resolution(root: Path, options: SourceOptions) -> str:
    """The one resolution present, or the one asked for (required when several are present)."""
    present = [r for r in RESOLUTIONS if (root / f"realiad_{r}").is_dir()]
    asked = options.realiad_resolution
    if asked is not None:
        if asked not in present:
            raise UserError(f"--realiad-resolution {asked}: {root / f'realiad_{asked}'} does not exist "
                            f"(present: {', '.join(present) or 'none'})")
        return asked
    if not present:
        raise empty_layout(options.dataset, root, EXPECTED)
    if len(present) > 1:
        raise UserError(f"{root} holds several resolutions ({', '.join(present)}): "
                        f"choose one with --realiad-resolution")
    return present[0]


def json_dir_candidates(root: Path) -> list[Path]:
    fuiad = sorted(p for p in root.glob("realiad_jsons_fuiad_*") if p.is_dir())
    return [root / name for name in JSON_DIRS if (root / name).is_dir()] + fuiad


def json_files(root: Path, asked: str | None) -> list[Path]:
    """The per-category jsons of the chosen folder, either nesting."""
    candidates = [root / asked] if asked else json_dir_candidates(root)
    for directory in candidates:
        for level in (directory, directory / directory.name):
            files = sorted(level.glob("*.json"))
            if files:
                return files
    if asked:
        raise UserError(f"--realiad-jsons {asked}: no <category>.json in {root / asked} or {root / asked / asked}")
    raise empty_layout("realiad", root, EXPECTED)


def _load(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the split json ({exc})") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(s), list) for s in ("train", "test")):
        raise UserError(f"{path}: expected {{\"meta\": ..., \"train\": [...], \"test\": [...]}}")
    return data


def _scan_json(path: Path, image_root: Path, root: Path, dataset: str, out: Scan) -> None:
    data = _load(path)
    category = path.stem
    normal_class = (data.get("meta") or {}).get("normal_class", "OK")
    cat_dir = image_root / category
    for split in ("train", "test"):
        for n, entry in enumerate(data.get(split) or []):
            where = f"{path} ({split} entry {n})"
            inside(cat_dir, str(entry["image_path"]), root, where)
            if entry.get("mask_path"):
                inside(cat_dir, str(entry["mask_path"]), root, where)
            item = _entry_item(entry, split, category, normal_class, cat_dir, root, dataset, out)
            if item is not None:
                out.items.append(item)


def _entry_item(entry: dict, split: str, category: str, normal_class: str, cat_dir: Path, root: Path,
                dataset: str, out: Scan) -> Item | None:
    image = cat_dir / entry["image_path"]
    source = image.relative_to(root).as_posix()
    mask_rel = entry.get("mask_path") or ""
    anomaly = entry.get("anomaly_class", normal_class)
    label = int(anomaly != normal_class and bool(mask_rel))
    if not image.is_file():
        out.skipped.append(Skip(source, "image missing (listed in the split json)"))
        return None
    mask = cat_dir / mask_rel if label and split == "test" else None
    if mask is not None and not mask.is_file():
        out.skipped.append(Skip(source, f"mask missing: expected {mask.relative_to(root).as_posix()}"))
        return None
    view = _VIEW_RE.search(image.stem)
    return Item(dataset=dataset, class_name=category, group=category, split=split, label=label,
                defect=str(anomaly) if label else _folder_defect(entry["image_path"]), stem=image.stem,
                path=str(image), source=source, mask_path=str(mask) if mask else "",
                view=view.group(1) if view else "", sample=Path(entry["image_path"]).parent.as_posix())


def _folder_defect(image_path: str) -> str:
    """``NG/<defect>/...`` -> the defect folder (a normal view under it keeps its provenance); else good."""
    parts = Path(image_path).parts
    return parts[1] if len(parts) > 2 and parts[0] == "NG" else NORMAL_DEFECT
