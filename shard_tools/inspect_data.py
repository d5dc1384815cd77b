"""A second multi-class benchmark, of real images from the package registries, unlike the demo's.

- ``solar_mono``, ``solar_poly``: electroluminescence images of mono- and polycrystalline solar cells
  with REAL defects (cracks, inactive areas, broken fingers), from the ELPV data set (Deitsch et al.,
  PyPI ``elpv-dataset``): normal = defect probability 0, defective = probability 1 (the uncertain 1/3
  and 2/3 are left out). Labels are image-level (no masks). The two classes look alike.
- ``moon``, ``print``, ``board``, ``retina``: crops of photographs bundled with scikit-image (lunar
  surface, a printed page, formulas written on a board, a fundus; none is a demo class; print and board
  look alike), with synthetic defects of other kinds than the demo's
  (smear, fade, warp, speckle, erase) and exact masks. Train crops come from the top 60% of each
  photograph, test crops from the bottom 40%, and every test image of these classes, normal or not,
  is seen under a lighting the training never shows (gamma and a linear illumination gradient), so
  a model must accept normal variation it was not trained on.

    pip install --no-deps elpv-dataset==1.0.0.post1
    python shard_tools/inspect_data.py --out DIR [--seed 0] [--per-class 48] [--size 128]
    python shard_tools/build.py --datasets inspect --out runs/bench/shards --val-fraction 0.15
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from shard_tools.demo_data import DemoSpec, load_photo, parse_spec, random_crop, test_rows, train_rows, write_png  # noqa: E402
from shard_tools.errors import UserError  # noqa: E402

PHOTOS = {"moon": "moon", "print": "page", "board": "text", "retina": "retina"}
DEFECTS = ("smear", "fade", "warp", "speckle", "erase")
SOLAR = ("mono", "poly")
ELPV_PIN = "elpv-dataset==1.0.0.post1"


# The same sizes as the demo's (DemoSpec); the solar classes take twice as many test images of each kind.
InspectSpec = DemoSpec


# ---------------------------------------------------------------- solar cells (real defects)


def elpv_records() -> list[tuple[Path, float, str]]:
    """(image path, defect probability, mono|poly) of every ELPV cell, from the installed package."""
    try:
        import elpv_dataset
    except ImportError:
        raise UserError(f"the inspect benchmark needs the ELPV images: pip install --no-deps {ELPV_PIN}") from None
    root = Path(elpv_dataset.__file__).parent / "data"
    with open(root / "labels.csv") as f:
        rows = [line.split() for line in f if line.strip()]
    return [(root / path, float(prob), kind) for path, prob, kind in rows]


def write_solar(out: Path, spec: InspectSpec) -> list[str]:
    """solar_mono / solar_poly: train and test normals and test defectives drawn without overlap."""
    records = elpv_records()
    names = []
    for index, kind in enumerate(SOLAR):
        rng = np.random.default_rng([spec.seed, 100 + index])
        good = [p for p, prob, k in records if k == kind and prob == 0.0]
        bad = [p for p, prob, k in records if k == kind and prob == 1.0]
        good = [good[i] for i in rng.permutation(len(good))]
        bad = [bad[i] for i in rng.permutation(len(bad))]
        n_test = 2 * spec.test_good
        if len(good) < spec.per_class + n_test or len(bad) < 2 * spec.test_defect:
            raise UserError(f"ELPV {kind}: too few cells for {spec.per_class} train + {n_test} test images")
        name = f"solar_{kind}"
        class_dir = out / name
        shutil.rmtree(class_dir, ignore_errors=True)
        for i, path in enumerate(good[:spec.per_class]):
            write_png(class_dir / "train" / "good" / f"{i:03d}.png", _cell(path, spec.size))
        for i, path in enumerate(good[spec.per_class:spec.per_class + n_test]):
            write_png(class_dir / "test" / "good" / f"{i:03d}.png", _cell(path, spec.size))
        for i, path in enumerate(bad[:2 * spec.test_defect]):
            write_png(class_dir / "test" / "defect" / f"{i:03d}.png", _cell(path, spec.size))
        names.append(name)
    return names


def _cell(path: Path, size: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UserError(f"{path}: not a readable image (reinstall {ELPV_PIN})")
    return cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)


# ---------------------------------------------------------------- photographs (synthetic defects)


def relight(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lighting the training never shows: gamma in [0.8, 1.25] and a linear gradient of +-12% at a random angle."""
    h, w = image.shape[:2]
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / (max(h, w) / 2)
    gain = 1 + rng.choice([-1, 1]) * rng.uniform(0.06, 0.12) * ramp
    out = 255.0 * (image.astype(np.float32) / 255.0) ** gamma * gain[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _blob(size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int], int]:
    """An elliptical region (uint8 0/1 mask), its centre and its larger radius."""
    mask = np.zeros((size, size), np.uint8)
    center = tuple(int(v) for v in rng.integers(size // 5, size - size // 5, 2))
    axes = tuple(int(v) for v in rng.integers(size // 14, size // 7, 2))
    cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    return mask, center, max(axes)


MIN_VISIBLE = 8  # grey levels: a pixel the defect changed less than this is not part of it
MIN_AREA = 0.002  # of the image: a defect smaller than this (e.g. a fade on a flat spot) is drawn elsewhere


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
               tries: int = 20) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (defective image, bool mask of the pixels the defect visibly changes), drawn again elsewhere
    (up to ``tries`` times) while the visible part is too small to be a defect anyone could find; None
    when the image is too flat for this kind."""
    for _ in range(tries):
        out, region = _draw_defect(image, kind, rng)
        changed = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=2) >= MIN_VISIBLE
        mask = cv2.morphologyEx((changed & region).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        mask &= region.astype(np.uint8)
        if mask.sum() >= MIN_AREA * image.shape[0] * image.shape[1]:
            return out, mask.astype(bool)
    return None


def _draw_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with the defect drawn, bool region it may change)."""
    size = image.shape[0]
    mask, center, radius = _blob(size, rng)
    out = image.copy()
    if kind == "smear":  # directional motion blur inside the region
        length = int(rng.integers(size // 12, size // 7)) | 1
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        blurred = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6), borderType=cv2.BORDER_REFLECT_101)
        out[mask > 0] = blurred[mask > 0]
    elif kind == "fade":  # local loss of contrast towards the neighbourhood's mean
        local_mean = cv2.blur(image, (size // 6, size // 6)).astype(np.float32)
        faded = local_mean + 0.3 * (image.astype(np.float32) - local_mean)
        out[mask > 0] = np.clip(faded, 0, 255).astype(np.uint8)[mask > 0]
    elif kind == "warp":  # a swirl: the texture twisted about the centre
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        dy, dx = yy - center[1], xx - center[0]
        r = np.sqrt(dx ** 2 + dy ** 2)
        theta = rng.choice([-1, 1]) * 2.2 * np.clip(1 - r / (1.6 * radius), 0, 1) ** 2
        map_x = (center[0] + dx * np.cos(theta) - dy * np.sin(theta)).astype(np.float32)
        map_y = (center[1] + dx * np.sin(theta) + dy * np.cos(theta)).astype(np.float32)
        out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        mask = (r < 1.6 * radius).astype(np.uint8)  # every pixel the swirl moves, however little
    elif kind == "speckle":  # sensor-like noise inside the region
        noise = rng.normal(0, 45, image.shape).astype(np.float32)
        out[mask > 0] = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)[mask > 0]
    elif kind == "erase":  # texture missing: the region filled smoothly from its border
        out = cv2.inpaint(image, mask, 5, cv2.INPAINT_TELEA)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return out, mask > 0


def write_photos(out: Path, spec: InspectSpec) -> list[str]:
    names = sorted(PHOTOS)
    for index, name in enumerate(names):
        rng = np.random.default_rng([spec.seed, index])
        photo = load_photo(PHOTOS[name])
        class_dir = out / name
        shutil.rmtree(class_dir, ignore_errors=True)
        for i in range(spec.per_class):
            write_png(class_dir / "train" / "good" / f"{i:03d}.png",
                      random_crop(photo, train_rows(photo), spec.size, rng))
        for i in range(spec.test_good):
            crop = random_crop(photo, test_rows(photo), spec.size, rng)
            write_png(class_dir / "test" / "good" / f"{i:03d}.png", relight(crop, rng))
        kinds = [DEFECTS[(index + k) % len(DEFECTS)] for k in range(3)]
        for i in range(spec.test_defect):
            kind = kinds[i % len(kinds)]
            defective = None
            while defective is None:  # a crop too flat for this kind of defect is replaced by another
                defective = add_defect(random_crop(photo, test_rows(photo), spec.size, rng), kind, rng)
            image, mask = defective
            write_png(class_dir / "test" / kind / f"{i:03d}.png", relight(image, rng))
            write_png(class_dir / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return names


def write_inspect(out: Path, seed: int = 0, spec: InspectSpec | None = None) -> list[str]:
    """Write the benchmark's tree into ``out`` (its class folders are replaced); return the class names."""
    spec = spec or InspectSpec(seed=seed)
    return write_solar(out, spec) + write_photos(out, spec)


def main(argv: list[str] | None = None) -> int:
    out, spec = parse_spec(argv, "Write the inspect benchmark (MVTec layout).")
    try:
        names = write_inspect(out, spec=spec)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} classes ({', '.join(names)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
