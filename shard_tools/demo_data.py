"""A small multi-class data set in the MVTec layout, from photographs that ship with scikit-image.

Train and test crops come from disjoint parts of each photograph (top 60% / bottom 40%); test defects
are synthetic (scratch, stain, hole, patch pasted from another class, colour shift) with exact masks.
Grass and gravel are alike on purpose, so a jointly trained model can confuse them.

    python shard_tools/demo_data.py --out DIR [--seed 0] [--per-class 48] [--size 128]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

# class name -> skimage.data loader name; all bundled with the wheel (no download).
# Photographs whose top and bottom look alike (textures, repeated objects), so the disjoint train and
# test regions show the same kind of content.
PHOTOS = {"brick": "brick", "grass": "grass", "gravel": "gravel", "coins": "coins",
          "tissue": "immunohistochemistry", "galaxies": "hubble_deep_field"}
DEFECTS = ("scratch", "stain", "hole", "patch", "color")
TRAIN_TOP = 0.6  # train crops from rows [0, 60%), test crops from rows [60%, 100%)
CROP = 0.38  # crop side as a fraction of the photograph's shorter side


@dataclass(frozen=True)
class DemoSpec:
    size: int = 128
    per_class: int = 48  # train images per class (val is taken from these by the builder)
    test_good: int = 10
    test_defect: int = 12  # spread over three defect kinds per class
    seed: int = 0


def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as BGR uint8."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2BGR)


def random_crop(photo: np.ndarray, rows: tuple[int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop inside the row band ``rows``, resized to ``size``."""
    height, width = photo.shape[:2]
    side = int(CROP * min(height, width))
    y = int(rng.integers(rows[0], max(rows[0], rows[1] - side) + 1))
    x = int(rng.integers(0, width - side + 1))
    return cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def test_rows(photo: np.ndarray) -> tuple[int, int]:
    return int(TRAIN_TOP * photo.shape[0]), photo.shape[0]


def train_rows(photo: np.ndarray) -> tuple[int, int]:
    return 0, int(TRAIN_TOP * photo.shape[0])


def add_defect(image: np.ndarray, kind: str, donor: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective image, bool mask of exactly the pixels the defect covers)."""
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], np.uint8)
    out = image.copy()
    center = tuple(int(v) for v in rng.integers(size // 5, size - size // 5, 2))
    if kind == "scratch":
        points = np.cumsum(rng.integers(-size // 4, size // 4 + 1, (3, 2)), axis=0) + np.array(center)
        points = np.clip(points, 0, size - 1).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [points], False, 1, thickness=max(1, size // 64))
        out[mask > 0] = rng.choice([20, 235]) + rng.integers(-15, 16, 3)
    elif kind in ("stain", "color"):
        axes = tuple(int(v) for v in rng.integers(size // 14, size // 7, 2))
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        region = out[mask > 0].astype(np.float32)
        if kind == "stain":
            tint = np.array(rng.integers(0, 256, 3), np.float32)
            region = 0.45 * region + 0.55 * tint
        else:  # a colour cast, visible on grey textures too: one channel up, the others down
            gains = np.array([1.6, 0.55, 0.55], np.float32)[rng.permutation(3)]
            region = np.clip(region * gains + 40 * (gains > 1), 0, 255)
        out[mask > 0] = region.astype(np.uint8)
    elif kind == "hole":
        cv2.circle(mask, center, int(rng.integers(size // 16, size // 9)), 1, -1)
        out[mask > 0] = rng.integers(0, 30, (int(mask.sum()), 1))
    elif kind == "patch":
        side = int(rng.integers(size // 7, size // 4))
        y, x = (int(v) for v in rng.integers(0, size - side, 2))
        dy, dx = (int(v) for v in rng.integers(0, donor.shape[0] - side, 2))
        out[y:y + side, x:x + side] = donor[dy:dy + side, dx:dx + side]
        mask[y:y + side, x:x + side] = 1
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return out, mask.astype(bool)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` (BGR or gray uint8) as PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    path.write_bytes(buf.tobytes())


def write_demo(out: Path, seed: int = 0, spec: DemoSpec | None = None) -> list[str]:
    """Write the demo tree into ``out`` (its class folders are replaced); return the class names."""
    spec = spec or DemoSpec(seed=seed)
    photos = {name: load_photo(loader) for name, loader in PHOTOS.items()}
    names = sorted(photos)
    for index, name in enumerate(names):
        rng = np.random.default_rng([spec.seed, index])
        class_dir = out / name
        shutil.rmtree(class_dir, ignore_errors=True)
        photo = photos[name]
        for i in range(spec.per_class):
            write_png(class_dir / "train" / "good" / f"{i:03d}.png",
                      random_crop(photo, train_rows(photo), spec.size, rng))
        for i in range(spec.test_good):
            write_png(class_dir / "test" / "good" / f"{i:03d}.png",
                      random_crop(photo, test_rows(photo), spec.size, rng))
        kinds = [DEFECTS[(index + k) % len(DEFECTS)] for k in range(3)]
        for i in range(spec.test_defect):
            kind = kinds[i % len(kinds)]
            donor_photo = photos[names[(index + 1 + i) % len(names)]]
            donor = random_crop(donor_photo, test_rows(donor_photo), spec.size, rng)
            image, mask = add_defect(random_crop(photo, test_rows(photo), spec.size, rng), kind, donor, rng)
            write_png(class_dir / "test" / kind / f"{i:03d}.png", image)
            write_png(class_dir / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return names


def parse_spec(argv: list[str] | None, description: str,
               defaults: DemoSpec | None = None) -> tuple[Path, DemoSpec]:
    """The output folder and the set's sizes from the command line (shared by the generated sets, each with
    its own ``defaults``, the demo's when None)."""
    defaults = defaults or DemoSpec()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--per-class", type=int, default=defaults.per_class, help="train images per class")
    p.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    p.add_argument("--test-good", type=int, default=defaults.test_good)
    p.add_argument("--test-defect", type=int, default=defaults.test_defect)
    a = p.parse_args(argv)
    return a.out, DemoSpec(size=a.size, per_class=a.per_class, test_good=a.test_good, test_defect=a.test_defect,
                           seed=a.seed)


def main(argv: list[str] | None = None) -> int:
    out, spec = parse_spec(argv, "Write the demo data set (MVTec layout).")
    names = write_demo(out, spec=spec)
    print(f"wrote {len(names)} classes ({', '.join(names)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
