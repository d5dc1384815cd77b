"""A many-class benchmark of look-alike textures, in the regime of the paper (inter-class confusion).

22 classes in 5 groups of real photographs that are hard to tell apart at 128 px (soils, grasses, rocks,
paving stones, snow and ice), the ground textures of Extreme Tux Racer (Debian main, GPL-2+; one
256 x 256 photograph per class). Train crops come from the top 60% of each photograph, test crops from the
bottom 40% (the demo's ``random_crop``). Half of each class's defective test images are *foreign patches*:
a piece of another class of the same group pasted in (hard-edged, mask = the piece), which a model
trained on every class tends to reconstruct and miss, while a model of the one class flags it. The other
half are the demo's synthetic defects (scratch, stain, hole, colour). Every defective image, the class it
took a patch from included, is recorded in ``lookalike.json`` beside the class folders.

    apt-get install extremetuxracer-data
    python shard_tools/lookalike_data.py --out DIR [--seed 0] [--per-class 32] [--size 128]
    python shard_tools/build.py --datasets lookalike --out runs/bench/shards --val-fraction 0.15
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from shard_tools.demo_data import DemoSpec, add_defect, parse_spec, random_crop, test_rows, train_rows, write_png  # noqa: E402
from shard_tools.errors import UserError  # noqa: E402

INSTALL = "apt-get install extremetuxracer-data"
TERRAINS = Path("/usr/share/games/etr/terrains")
# group -> class -> terrain photograph (TERRAINS/<name>.png). Left out: ice01 (a copy of ice), floor02,
# rock03 and rock04 (floor01 and rock02 under an overlay), snow (flat white), ice03 (a drawn border) and the
# snowy_* / icy_* mixes (their painted snow blobs would look like defects).
GROUPS: dict[str, dict[str, str]] = {
    "soil": {"dirt": "dirt01", "scree": "floor01", "mud": "mud01", "sand": "sand01"},
    "grass": {"grass_dry": "grass01", "grass_clover": "grass02", "grass_dark": "grass03"},
    "rock": {"rock_grey": "rock", "rock_serpentine": "rock01", "rock_pale": "rock02", "rock_moss": "rock05",
             "rock_veined": "rock06", "rock_granite": "rock07"},
    "paving": {"cobbles": "pave01", "bricks": "pave02", "pebbles": "pebbles01", "gravel_fine": "pebbles04"},
    "snow": {"snow_dirty": "snow01", "snow_streaked": "snow02", "snow_thin": "snow03", "ice_cracked": "ice",
             "ice_scratched": "ice02"},
}
FOREIGN = "foreign"
DEFECTS = ("scratch", "stain", "hole", "color")  # the demo's kinds; its "patch" (any class) gives way to FOREIGN
RECORD = "lookalike.json"

# Fewer train images than the demo's 48 (a 256 px photograph has little room for disjoint crops), and as
# many defective test images as normal ones.
LookalikeSpec = DemoSpec
DEFAULTS = LookalikeSpec(per_class=32, test_good=8, test_defect=8)


def load_sources(groups: dict[str, dict[str, str]] | None = None, folder: Path | None = None) -> dict[str, np.ndarray]:
    """Every class's photograph (BGR uint8), read from the installed package; the one place that reads it."""
    groups = groups or GROUPS
    folder = folder or TERRAINS
    sources = {}
    for classes in groups.values():
        for name, stem in classes.items():
            image = cv2.imread(str(folder / f"{stem}.png"), cv2.IMREAD_COLOR)
            if image is None:
                raise UserError(f"the lookalike benchmark needs {folder / stem}.png (Extreme Tux Racer's terrain "
                                f"photographs): {INSTALL}")
            sources[name] = image
    return sources


def paste_foreign(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(``image`` with a piece of ``donor`` pasted in at the same place, bool mask of exactly that piece).

    The piece is an ellipse or a rotated rectangle a fifth to a third of the image wide, hard-edged so that
    the mask is exact."""
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], np.uint8)
    center = tuple(int(v) for v in rng.integers(size // 4, size - size // 4, 2))
    half = tuple(int(v) for v in rng.integers(size // 10, size // 6 + 1, 2))
    angle = float(rng.uniform(0, 180))
    if rng.random() < 0.5:
        cv2.ellipse(mask, center, half, angle, 0, 360, 1, -1)
    else:
        box = cv2.boxPoints((center, (2 * half[0], 2 * half[1]), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    out = image.copy()
    out[mask > 0] = donor[mask > 0]
    return out, mask > 0


def write_class(class_dir: Path, photo: np.ndarray, donors: dict[str, np.ndarray], kinds: list[str],
                spec: LookalikeSpec, rng: np.random.Generator) -> dict[str, dict]:
    """One class's train / test / ground_truth tree; return {image path relative to the class: its defect
    record}. Even-numbered defective images are foreign patches from a random class of ``donors``."""
    shutil.rmtree(class_dir, ignore_errors=True)
    for i in range(spec.per_class):
        write_png(class_dir / "train" / "good" / f"{i:03d}.png", random_crop(photo, train_rows(photo), spec.size, rng))
    for i in range(spec.test_good):
        write_png(class_dir / "test" / "good" / f"{i:03d}.png", random_crop(photo, test_rows(photo), spec.size, rng))
    records = {}
    donor_names = sorted(donors)
    for i in range(spec.test_defect):
        crop = random_crop(photo, test_rows(photo), spec.size, rng)
        if i % 2 == 0:
            kind, donor = FOREIGN, donor_names[int(rng.integers(len(donor_names)))]
            donor_photo = donors[donor]
            image, mask = paste_foreign(crop, random_crop(donor_photo, test_rows(donor_photo), spec.size, rng), rng)
        else:
            kind, donor = kinds[(i // 2) % len(kinds)], None
            image, mask = add_defect(crop, kind, crop, rng)  # the donor argument is only read by "patch"
        write_png(class_dir / "test" / kind / f"{i:03d}.png", image)
        write_png(class_dir / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
        records[f"test/{kind}/{i:03d}.png"] = {"kind": kind, "donor": donor}
    return records


def check_groups(groups: dict[str, list[str]], sources: dict[str, np.ndarray]) -> None:
    """Every group needs a second class to take foreign patches from, every class a photograph."""
    for group, classes in groups.items():
        if len(classes) < 2:
            raise ValueError(f"group {group!r} has {len(classes)} class(es): foreign patches need at least 2")
        for name in classes:
            if name not in sources:
                raise ValueError(f"class {name!r} of group {group!r} has no source photograph")


def write_lookalike(out: Path, seed: int = 0, spec: LookalikeSpec | None = None,
                    sources: dict[str, np.ndarray] | None = None,
                    groups: dict[str, list[str]] | None = None) -> list[str]:
    """Write the benchmark's tree and its record into ``out`` (its class folders are replaced); return the class
    names. ``sources`` (class -> BGR photograph) and ``groups`` (group -> classes) default to the package's."""
    spec = spec or replace(DEFAULTS, seed=seed)
    if sources is None:
        sources = load_sources()
    groups = groups or {group: sorted(classes) for group, classes in GROUPS.items()}
    check_groups(groups, sources)
    group_of = {name: group for group, classes in groups.items() for name in classes}
    names = sorted(group_of)
    defects = {}
    for index, name in enumerate(names):
        rng = np.random.default_rng([spec.seed, index])
        donors = {other: sources[other] for other in groups[group_of[name]] if other != name}
        kinds = [DEFECTS[(index + k) % len(DEFECTS)] for k in range(2)]
        records = write_class(out / name, sources[name], donors, kinds, spec, rng)
        defects.update({f"{name}/{path}": record for path, record in records.items()})
    out.mkdir(parents=True, exist_ok=True)
    record = {"groups": {group: sorted(classes) for group, classes in groups.items()}, "defects": defects}
    (out / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return names


def main(argv: list[str] | None = None) -> int:
    out, spec = parse_spec(argv, "Write the lookalike benchmark (MVTec layout).", DEFAULTS)
    try:
        names = write_lookalike(out, spec=spec)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} classes in {len(GROUPS)} look-alike groups to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
