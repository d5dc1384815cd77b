"""predict.py on a folder with an unreadable file: scores for the others (equal to the model's), the bad one
reported."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from launch.predict import main
from pipelines.base.model import load_export, read_info, write_info
from tests.pipelines.shard_fixtures import eval_view, tiny_export

pytestmark = pytest.mark.slow  # end to end: launch/predict.py on a training export

@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("predict") / "export", 64)


def write_images(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, rel in enumerate(["a.png", "sub/b.jpg", "sub/c.png"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (48 + 8 * i, 40, 3), dtype=np.uint8))
        paths.append(path)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image, not listed")
    return paths


def test_scores_every_readable_image_and_reports_the_bad_one(export: Path, tmp_path: Path, capsys) -> None:
    images = write_images(tmp_path / "in")
    assert main(["--checkpoint", str(export), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--threshold", "1.5", "--batch-size", "2"]) == 0
    with open(tmp_path / "out" / "scores.csv") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["a.png", "b.jpg", "c.png"]
    model, cfg = load_export(export)
    for path in images:  # independent scoring, one image at a time
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            score = float(model(eval_view(rgb, None, 64)[0][None])["score"][0])
        row = rows[path.name]
        assert float(row["score"]) == pytest.approx(score, rel=1e-4)
        assert row["anomalous"] == ("yes" if score >= 1.5 else "no")
    with open(tmp_path / "out" / "skipped.csv") as f:
        skipped = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in skipped] == ["broken.png"]
    assert "broken.png" in capsys.readouterr().out
    heatmap_dir = tmp_path / "out" / "heatmaps"
    heatmaps = sorted(p.relative_to(heatmap_dir).as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert heatmaps == ["a.png.png", "sub/b.jpg.png", "sub/c.png.png"]  # the input's name + .png


def test_auto_threshold_needs_an_evaluation(export: Path, tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "in")
    info = read_info(export)
    info.pop("image_threshold", None)
    write_info(export, info)
    pattern = str(tmp_path / "in" / "*.png")
    assert main(["--checkpoint", str(export), "--input", pattern, "--out", str(tmp_path / "o1")]) == 2
    assert "image_threshold" in capsys.readouterr().err
    write_info(export, {**info, "image_threshold": 0.0})  # everything scores above 0: all anomalous
    assert main(["--checkpoint", str(export), "--input", str(tmp_path / "in" / "*.png"), "--out", str(tmp_path / "o2"),
                 "--no-vis"]) == 0
    with open(tmp_path / "o2" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["a.png"] and rows[0]["anomalous"] == "yes"
    assert not (tmp_path / "o2" / "heatmaps").exists()


def test_same_stem_other_suffix_keeps_both_heatmaps(export: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    for name, size in (("a.png", 40), ("a.jpg", 56)):
        cv2.imwrite(str(tmp_path / "in" / name), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert main(["--checkpoint", str(export), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--threshold", "none"]) == 0
    written = {p.name: cv2.imread(str(p)) for p in (tmp_path / "out" / "heatmaps").iterdir()}
    assert sorted(written) == ["a.jpg.png", "a.png.png"]
    assert not np.array_equal(written["a.jpg.png"], written["a.png.png"])  # two overlays, neither overwritten


def test_a_truncated_export_is_one_line_naming_the_file(export: Path, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "export"
    shutil.copytree(export, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write_images(tmp_path / "in")
    assert main(["--checkpoint", str(broken), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--threshold", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights}: not a readable safetensors file") and "Traceback" not in err


def test_an_out_holds_one_runs_outputs_and_is_never_scored_as_input(export: Path, tmp_path: Path, capsys) -> None:
    """Issue 21 item 9: a second run into --out sets the first one's files aside (no stale skipped.csv or
    heatmaps beside the new scores), and an --out inside --input is not read as input."""
    write_images(tmp_path / "in")
    out = tmp_path / "in" / "predictions"  # inside the input
    args = ["--checkpoint", str(export), "--input", str(tmp_path / "in"), "--out", str(out), "--threshold", "1.5"]
    assert main(args) == 0
    assert (out / "skipped.csv").is_file() and (out / "heatmaps" / "a.png.png").is_file()
    (tmp_path / "in" / "broken.png").unlink()
    (tmp_path / "in" / "sub" / "b.jpg").unlink()
    assert main(args) == 0  # again: the first run's heatmaps are in out, under the input
    with open(out / "scores.csv") as f:
        assert sorted(Path(r["path"]).name for r in csv.DictReader(f)) == ["a.png", "c.png"]
    assert not (out / "skipped.csv").exists()  # nothing was skipped this time: no stale list
    assert sorted(p.relative_to(out / "heatmaps").as_posix() for p in (out / "heatmaps").rglob("*.png")) == [
        "a.png.png", "sub/c.png.png"]
    (previous,) = out.glob("previous-*")
    assert (previous / "skipped.csv").is_file() and (previous / "scores.csv").is_file()
    assert "were moved into" in capsys.readouterr().err


def test_scores_csv_cells_never_start_a_spreadsheet_formula(export: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 14: a file named ``=HYPERLINK(...).png`` (or +, -, @) is written as text, not a formula."""
    rng = np.random.default_rng(2)
    names = ["=HYPERLINK(1).png", "+a.png", "-b.png", "@c.png", "plain.png"]
    (tmp_path / "in").mkdir()
    for name in names:
        cv2.imwrite(str(tmp_path / "in" / name), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    (tmp_path / "in" / "=broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path / "in")
    assert main(["--checkpoint", str(export), "--input", "*.png", "--out", str(tmp_path / "out"), "--no-vis",
                 "--threshold", "none"]) == 0
    with open(tmp_path / "out" / "scores.csv") as f:
        paths = sorted(r["path"] for r in csv.DictReader(f))
    assert paths == sorted(["'" + n if n[0] in "=+-@" else n for n in names])
    with open(tmp_path / "out" / "skipped.csv") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["'=broken.png"]


def test_glob_mode_scores_each_file_once_through_a_symlink_loop(tmp_path: Path) -> None:
    from pipelines.deploy.predict import list_inputs

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")  # in/loop/loop/... is the same folder
    files, _ = list_inputs(f"{tmp_path}/in/**/*.png")
    assert files == [tmp_path / "in" / "a.png"]


def test_an_unwritable_out_is_refused_before_any_image_is_scored(export: Path, tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "in")
    (tmp_path / "file").write_text("not a folder")
    assert main(["--checkpoint", str(export), "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "file" / "out"), "--no-vis", "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--out is not a writable directory" in err and "Traceback" not in err
