"""The inspect benchmark's generator: solar cells drawn without overlap, visible defects with exact masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shard_tools import inspect_data
from shard_tools.inspect_data import DEFECTS, InspectSpec, add_defect, relight, write_photos, write_solar


def _fake_elpv(tmp: Path, per_kind: dict[str, tuple[int, int]]) -> list[tuple[Path, float, str]]:
    records, n = [], 0
    for kind, (good, bad) in per_kind.items():
        for prob, count in ((0.0, good), (1.0, bad), (1 / 3, 3)):
            for _ in range(count):
                path = tmp / f"cell{n:04d}.png"
                cv2.imwrite(str(path), np.full((30, 30), n % 256, np.uint8))
                records.append((path, prob, kind))
                n += 1
    return records


def test_solar_classes_draw_disjoint_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _fake_elpv(tmp_path, {"mono": (20, 6), "poly": (20, 6)})
    monkeypatch.setattr(inspect_data, "elpv_records", lambda: records)
    spec = InspectSpec(size=16, per_class=8, test_good=3, test_defect=2)
    assert write_solar(tmp_path / "out", spec) == ["solar_mono", "solar_poly"]
    for name in ("solar_mono", "solar_poly"):
        folder = tmp_path / "out" / name
        train, good, bad = (sorted(folder.glob(f"{sub}/*.png")) for sub in ("train/good", "test/good", "test/defect"))
        assert (len(train), len(good), len(bad)) == (8, 6, 4)
        values = [int(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[0, 0]) for p in train + good + bad]
        assert len(set(values)) == len(values)  # every cell used once (each fake cell has its own grey level)
        assert not (folder / "ground_truth").exists()  # real defects, image-level labels only
    too_few = InspectSpec(size=16, per_class=30)
    with pytest.raises(inspect_data.UserError, match="too few cells"):
        write_solar(tmp_path / "out2", too_few)


@pytest.mark.parametrize("kind", DEFECTS)
def test_defects_change_exactly_their_mask(kind: str) -> None:
    rng = np.random.default_rng(3)
    image = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
    out, mask = add_defect(image, kind, rng)
    diff = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
    assert mask.sum() >= inspect_data.MIN_AREA * 96 * 96
    assert (diff[mask] >= 1).mean() > 0.9  # the mask is where the image changed ...
    assert diff[~mask].max() < inspect_data.MIN_VISIBLE  # ... and nothing outside it changed visibly


def test_flat_images_get_no_invisible_defect() -> None:
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert add_defect(flat, "fade", np.random.default_rng(0)) is None
    assert add_defect(flat, "smear", np.random.default_rng(0)) is None


def test_relight_changes_normal_test_images_but_keeps_their_structure() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (64, 64, 3), dtype=np.uint8)
    lit = relight(image, np.random.default_rng(1))
    assert np.abs(lit.astype(int) - image.astype(int)).mean() > 2
    assert np.corrcoef(lit[..., 0].ravel(), image[..., 0].ravel())[0, 1] > 0.95


def test_photo_classes_write_the_mvtec_layout(tmp_path: Path) -> None:
    names = write_photos(tmp_path, InspectSpec(size=48, per_class=3, test_good=2, test_defect=3))
    assert names == sorted(inspect_data.PHOTOS)
    for name in names:
        defects = sorted((tmp_path / name / "test").glob("*/*.png"))
        assert len(defects) == 5
        for path in defects:
            if path.parent.name == "good":
                continue
            mask = cv2.imread(str(tmp_path / name / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"), 0)
            assert mask is not None and set(np.unique(mask)) <= {0, 255} and mask.any()
