"""Every supported layout, with its gotchas, converted through the CLI and read back with WebDataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shard_tools.build import main
from tests.shard_tools import fixtures as fx
from tests.shard_tools.checks import check_build, manifest_of


def build(tmp_path: Path, dataset: str, root: Path, *extra: str) -> Path:
    assert main(["--datasets", dataset, "--root", f"{dataset}={root}", "--out", str(tmp_path / "out"), *extra]) == 0
    return tmp_path / "out" / dataset


def test_mvtec_masks_paired_by_name_and_val_split(tmp_path):
    exp = fx.write_mvtec(tmp_path / "src")
    got = check_build(build(tmp_path, "mvtec", tmp_path / "src"), "mvtec", exp)
    # 5 normal training images per class, 5%: one goes to val (at least one, never all)
    val = Counter(s["class_name"] for s in got.values() if s["split"] == "val")
    assert val == {"bottle": 1, "grid": 1}
    counts = manifest_of(tmp_path / "out" / "mvtec")["counts"]
    assert counts["test"]["bottle"] == {"normal": 2, "anomalous": 2}
    assert counts["train"]["grid"] == {"normal": 4, "anomalous": 0}


def test_mvtec_resized(tmp_path):
    exp = fx.write_mvtec(tmp_path / "src")
    got = check_build(build(tmp_path, "mvtec", tmp_path / "src", "--image-size", "10"), "mvtec", exp, image_size=10)
    # box 2..9 x 3..12 of a 20x24 image, area-resized to 10x10 and binarised at 0.5
    mask = got[("bottle/test/crack/000.png", "")]["mask"] == 255
    assert mask[2:4, 2:5].all() and not mask[6:, :].any() and not mask[:, 6:].any()


def test_folder_keeps_anomalies_without_masks_image_level(tmp_path):
    exp = fx.write_mvtec(tmp_path / "src", dataset="folder")
    check_build(build(tmp_path, "folder", tmp_path / "src"), "folder", exp)


def test_folder_without_ground_truth(tmp_path):
    exp = fx.write_mvtec(tmp_path / "src", dataset="folder", with_ground_truth=False)
    got = check_build(build(tmp_path, "folder", tmp_path / "src"), "folder", exp)
    assert sum(s["label"] for s in got.values()) == 6


def test_visa_csv_binarises_defect_ids_and_copies_jpeg_bytes(tmp_path):
    exp = fx.write_visa_csv(tmp_path / "src")
    got = check_build(build(tmp_path, "visa", tmp_path / "src"), "visa", exp)
    sample = got[("candle/Data/Images/Anomaly/001.JPG", "")]
    assert sample["image_ext"] == "jpg"
    assert sample["image_bytes"] == (tmp_path / "src/candle/Data/Images/Anomaly/001.JPG").read_bytes()
    assert (sample["width"], sample["height"]) == (20, 16)


def test_visa_reorganised_1cls(tmp_path):
    exp = fx.write_visa_1cls(tmp_path / "src")
    check_build(build(tmp_path, "visa", tmp_path / "src"), "visa", exp)


def test_btad_mixed_extensions_matched_by_stem(tmp_path):
    exp = fx.write_btad(tmp_path / "src")
    got = check_build(build(tmp_path, "btad", tmp_path / "src"), "btad", exp)
    # BMP becomes lossless PNG (pixels compared in check_build)
    assert {s["image_ext"] for s in got.values()} == {"png"}


@pytest.mark.parametrize("nested", [False, True])
def test_realiad_views_and_ok_marked_ng_views(tmp_path, nested):
    exp = fx.write_realiad(tmp_path / "src", nested=nested)
    got = check_build(build(tmp_path, "realiad", tmp_path / "src"), "realiad", exp)
    assert {s["view"] for s in got.values()} == {"C1", "C2", "C3", "C4", "C5"}
    ng_ok = [s for s in got.values() if "/NG/QS/" in s["source"]]
    assert len(ng_ok) == 10 and all(s["label"] == 0 and s["mask"] is None for s in ng_ok)


def test_realiad_val_split_is_drawn_by_sample(tmp_path):
    """The five views of a sample go to train or to val together (a per-image draw of 10 of 30 views
    would almost surely split some sample)."""
    exp = fx.write_realiad(tmp_path / "src", nested=False, train_samples=6)
    got = check_build(build(tmp_path, "realiad", tmp_path / "src", "--val-fraction", "0.34"), "realiad", exp)
    splits: dict[tuple[str, str], set[str]] = {}
    for s in got.values():
        if s["split"] != "test":
            splits.setdefault((s["class_name"], str(Path(s["source"]).parent)), set()).add(s["split"])
    assert len(splits) == 12 and all(len(v) == 1 for v in splits.values()), splits
    val = Counter(cls for (cls, _), v in splits.items() if v == {"val"})
    assert val == {"audiojack": 2, "toy_brick": 2}  # round(0.34 x 6 samples) per category, all five views each
    assert Counter(s["class_name"] for s in got.values() if s["split"] == "val") == {"audiojack": 10, "toy_brick": 10}


def test_realiad_other_json_folder_and_resolution_choice(tmp_path, capsys):
    exp = fx.write_realiad(tmp_path / "src", nested=False, resolution="512", jsons="realiad_jsons_sv")
    (tmp_path / "src" / "realiad_1024").mkdir()
    args = ["--datasets", "realiad", "--root", f"realiad={tmp_path / 'src'}", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "--realiad-resolution" in capsys.readouterr().err
    assert main(args + ["--realiad-resolution", "512"]) == 0
    check_build(tmp_path / "out" / "realiad", "realiad", exp)


def test_manta_tiles_five_views_and_empty_mask_views_are_normal(tmp_path, capsys):
    exp = fx.write_manta(tmp_path / "src")
    got = check_build(build(tmp_path, "manta", tmp_path / "src"), "manta", exp)
    assert "sorted order" in capsys.readouterr().err  # the 'pill' masks are named differently
    crack = [got[("mech/bolt/test-pixel/crack/000.png", str(v))] for v in range(5)]
    assert [s["label"] for s in crack] == [0, 1, 0, 1, 0]
    assert all((s["width"], s["height"]) == (40, 10) and s["image"].shape[:2] == (10, 8) for s in crack)


def test_cocoad_split_by_category_index_with_polygon_and_rle_masks(tmp_path):
    exp = fx.write_cocoad(tmp_path / "src")
    got = check_build(build(tmp_path, "cocoad", tmp_path / "src", "--cocoad-split", "1"), "cocoad", exp)
    assert not any(s["source"].endswith("000000000004.jpg") for s in got.values())  # no annotations
    assert {s["group"] for s in got.values()} == {"coco"}


def test_cocoad_split_0_holds_out_other_ids(tmp_path):
    fx.write_cocoad(tmp_path / "src")
    got = fx.read_build(build(tmp_path, "cocoad", tmp_path / "src", "--cocoad-split", "0"))
    # split 0 holds out indices 0..19 (ids 1..21 without 12): images with id 21, 10 or 1 become anomalous
    test_labels = {s["source"]: s["label"] for s in got.values() if s["split"] == "test"}
    assert test_labels["val2017/000000000000.jpg"] == 1 and test_labels["val2017/000000000003.jpg"] == 0
    assert all(s["label"] == 0 for s in got.values() if s["split"] != "test")


def test_demo_builds_verifies_and_mixes_classes_in_every_shard(tmp_path):
    out = tmp_path / "out"
    assert main(["--datasets", "demo", "--out", str(out), "--max-shard-bytes", "1MB"]) == 0
    from shard_tools.verify import verify_build

    assert verify_build(out / "demo") == []
    got = fx.read_build(out / "demo")
    manifest = manifest_of(out / "demo")
    assert len(manifest["classes"]) == 6
    anomalous = [s for s in got.values() if s["label"] == 1]
    assert anomalous and all(s["split"] == "test" and (s["mask"] == 255).any() for s in anomalous)
    assert all((s["mask"] == 255).mean() < 0.5 for s in anomalous)
    train_shards = [s for s in manifest["shards"] if s["split"] == "train"]
    assert len(train_shards) >= 3
    for shard in train_shards:
        classes = {s["class_name"] for s in got.values() if s["__url__"].endswith(shard["name"])}
        assert len(classes) >= 4, (shard["name"], classes)
    train_test_sources = {s["source"].split("/")[1] for s in got.values()}
    assert train_test_sources == {"train", "test"}
    assert np.mean([s["image"].shape[0] == 128 for s in got.values()]) == 1.0


@pytest.mark.parametrize("escape", ["absolute", "dotdot"])
def test_paths_from_data_files_must_stay_inside_the_root(tmp_path, capsys, escape):
    """Issue 21 item 11: a VisA split csv row or a Real-IAD json entry naming a file outside --root is refused
    (one line naming the data file), so no outside file is packed into the shards."""
    import json

    secret = tmp_path / "secret.JPG"
    fx.write_image(secret, fx.noise(16, 20, 1))
    visa = tmp_path / "visa"
    fx.write_visa_csv(visa)
    csv_path = visa / "split_csv" / "1cls.csv"
    bad = str(secret) if escape == "absolute" else "../secret.JPG"
    csv_path.write_text(csv_path.read_text() + f"candle,train,normal,{bad},\n")
    args = ["--datasets", "visa", "--root", f"visa={visa}", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{csv_path}:" in err and repr(bad) in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "out").rglob("*.tar"))

    realiad = tmp_path / "realiad"
    fx.write_realiad(realiad, nested=False)
    js = realiad / "realiad_jsons" / "audiojack.json"
    data = json.loads(js.read_text())
    data["train"].append({"category": "audiojack", "anomaly_class": "OK", "mask_path": None,
                          "image_path": str(secret) if escape == "absolute" else "../../../secret.JPG"})
    js.write_text(json.dumps(data))
    args = ["--datasets", "realiad", "--root", f"realiad={realiad}", "--out", str(tmp_path / "out2")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{js} (train entry " in err and "data root" in err and len(err.splitlines()) == 1, err


def test_class_names_that_collide_in_sample_keys_are_refused_at_build_time(tmp_path, capsys):
    """Issue 21 item 12: ``coins x`` and ``coins.x`` both become ``coins_x`` in keys; before, 6 of 7 images of
    one class were dropped as duplicates with exit 0."""
    fx.write_mvtec(tmp_path / "src", dataset="folder")
    (tmp_path / "src" / "bottle").rename(tmp_path / "src" / "coins x")
    (tmp_path / "src" / "grid").rename(tmp_path / "src" / "coins.x")
    assert main(["--datasets", "folder", "--root", f"folder={tmp_path / 'src'}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "classes 'folder/coins x' and 'folder/coins.x' both become 'folder/coins_x'" in err, err
    assert len(err.splitlines()) == 1 and not list((tmp_path / "out").rglob("*.tar"))
