"""The lookalike benchmark's generator, on synthetic source photographs (the Debian package is optional here).

Each synthetic photograph encodes where a pixel came from: channel 0 is the source row (to check that train
and test crops come from disjoint bands), channel 2 a level of its own class (to check that a foreign patch
holds another class's pixels), channel 1 noise (a texture for the defects to change).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from shard_format.manifest import read_manifest
from shard_tools import lookalike_data
from shard_tools.demo_data import TRAIN_TOP
from shard_tools.errors import UserError
from shard_tools.lookalike_data import FOREIGN, RECORD, LookalikeSpec, paste_foreign, write_lookalike

GROUPS = {"g1": ["a", "b"], "g2": ["c", "d", "e"]}
LEVEL = {"a": 30, "b": 80, "c": 130, "d": 180, "e": 230}  # channel 2 of each class's photograph
SIDE = 120  # source rows 0..119 fit in channel 0
SPEC = LookalikeSpec(size=32, per_class=4, test_good=3, test_defect=4, seed=0)


def fake_sources() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    sources = {}
    for name, level in LEVEL.items():
        photo = np.empty((SIDE, SIDE, 3), np.uint8)
        photo[..., 0] = np.arange(SIDE, dtype=np.uint8)[:, None]
        photo[..., 1] = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        photo[..., 2] = level
        sources[name] = photo
    return sources


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lookalike")
    assert write_lookalike(out, spec=SPEC, sources=fake_sources(), groups=GROUPS) == sorted(LEVEL)
    return out


def test_layout_counts_and_masks(tree: Path) -> None:
    record = json.loads((tree / RECORD).read_text())
    assert record["groups"] == GROUPS
    for name in LEVEL:
        assert len(list((tree / name / "train" / "good").glob("*.png"))) == SPEC.per_class
        assert len(list((tree / name / "test" / "good").glob("*.png"))) == SPEC.test_good
        defective = [p for p in (tree / name / "test").glob("*/*.png") if p.parent.name != "good"]
        assert len(defective) == SPEC.test_defect
        assert sum(p.parent.name == FOREIGN for p in defective) == SPEC.test_defect // 2  # half are foreign
        for path in defective:
            assert f"{name}/test/{path.parent.name}/{path.name}" in record["defects"]
            mask = read(tree / name / "ground_truth" / path.parent.name / f"{path.stem}_mask.png")
            assert mask.shape == read(path).shape[:2] == (SPEC.size, SPEC.size)
            assert set(np.unique(mask)) == {0, 255}  # binary and non-empty


def test_foreign_patches_come_from_another_class_of_the_same_group(tree: Path) -> None:
    group_of = {name: group for group, names in GROUPS.items() for name in names}
    foreign = {k: r for k, r in json.loads((tree / RECORD).read_text())["defects"].items() if r["kind"] == FOREIGN}
    assert len(foreign) == len(LEVEL) * SPEC.test_defect // 2
    for key, rec in foreign.items():
        name = key.split("/")[0]
        assert rec["donor"] != name and group_of[rec["donor"]] == group_of[name]
        image, mask = read(tree / key), read(tree / name / "ground_truth" / FOREIGN / f"{Path(key).stem}_mask.png")
        inside, outside = image[..., 2][mask > 0], image[..., 2][mask == 0]
        assert (inside == LEVEL[rec["donor"]]).all() and (outside == LEVEL[name]).all()  # exactly the patch


def test_train_and_test_crops_come_from_disjoint_bands(tree: Path) -> None:
    boundary = int(TRAIN_TOP * SIDE)
    for name in LEVEL:
        train = [read(p)[..., 0] for p in (tree / name / "train" / "good").glob("*.png")]
        test = [read(p)[..., 0] for p in (tree / name / "test" / "good").glob("*.png")]
        assert max(int(t.max()) for t in train) < boundary <= min(int(t.min()) for t in test)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path, tree: Path) -> None:
    write_lookalike(tmp_path / "again", spec=SPEC, sources=fake_sources(), groups=GROUPS)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert all((tree / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    other = LookalikeSpec(**{**SPEC.__dict__, "seed": 1})
    write_lookalike(tmp_path / "other", spec=other, sources=fake_sources(), groups=GROUPS)
    first = Path("a/train/good/000.png")
    assert (tree / first).read_bytes() != (tmp_path / "other" / first).read_bytes()


def test_paste_foreign_changes_exactly_its_mask() -> None:
    rng = np.random.default_rng(0)
    image, donor = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)
    out, mask = paste_foreign(image, donor, rng)
    assert 0.03 < mask.mean() < 0.35  # a fifth to a third of the image wide
    assert (out[mask] == 200).all() and (out[~mask] == 0).all()


def test_a_group_of_one_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        write_lookalike(tmp_path, spec=SPEC, sources=fake_sources(), groups={"g": ["a"]})


def test_missing_package_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(lookalike_data, "TERRAINS", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install extremetuxracer-data"):
        write_lookalike(tmp_path / "out")
    assert lookalike_data.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install extremetuxracer-data" in err


def test_build_writes_and_shards_the_generated_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build.py --datasets lookalike`` with no --root, on the synthetic photographs (default sizes)."""
    from shard_tools.build import run as build_shards

    monkeypatch.setattr(lookalike_data, "load_sources", fake_sources)
    monkeypatch.setattr(lookalike_data, "GROUPS", {g: {n: n for n in names} for g, names in GROUPS.items()})
    build_shards(["--datasets", "lookalike", "--out", str(tmp_path), "--val-fraction", "0.15"])
    manifest = read_manifest(tmp_path / "lookalike")
    assert sorted(manifest["classes"]) == [f"lookalike/{n}" for n in sorted(LEVEL)]
    assert manifest["counts"]["test"]["a"] == {"normal": 8, "anomalous": 8}  # the defaults: 8 good + 8 defective


def test_real_package_gives_at_least_16_look_alike_classes(tmp_path: Path) -> None:
    if not all((lookalike_data.TERRAINS / f"{stem}.png").is_file()
               for classes in lookalike_data.GROUPS.values() for stem in classes.values()):
        pytest.skip(f"Extreme Tux Racer's terrains are not installed ({lookalike_data.INSTALL})")
    names = write_lookalike(tmp_path, spec=LookalikeSpec(size=32, per_class=2, test_good=1, test_defect=2))
    assert len(names) >= 16 and len(lookalike_data.GROUPS) >= 4
    assert len(list(tmp_path.glob("*/test/foreign/*.png"))) == len(names)
