"""predict.py --model on exported graphs: the same files as the torch path for the same input, and it runs in a
process where importing torch fails."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from launch.predict import main as predict_main
from tests.pipelines.deploy_fixtures import DeployRuns

pytest.importorskip("onnxruntime", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytest.importorskip("openvino", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytestmark = pytest.mark.slow  # end to end: export, then launch/predict.py in fresh processes

REPO = Path(__file__).resolve().parents[3]
BLOCK_TORCH = '''
import sys


class BlockTorch:
    """Every import of torch (and of what needs it) fails, as on a line PC without it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"import of {name} blocked: this process has no torch")
        return None


sys.meta_path.insert(0, BlockTorch())
'''


@pytest.fixture(scope="module")
def inputs(deploy_runs: DeployRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo test set in subfolders, an image of another size, a gray one and a broken file."""
    root = tmp_path_factory.mktemp("inputs")
    for cls in deploy_runs.classes():
        shutil.copytree(deploy_runs.demo / cls / "test", root / cls)
    photo = cv2.imread(str(next((deploy_runs.demo / "grass" / "test").glob("*/*.png"))))
    cv2.imwrite(str(root / "wide.jpg"), cv2.resize(photo, (150, 90)))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    (root / "broken.png").write_bytes(b"\x89PNG cut")
    return root


@pytest.fixture(scope="module")
def torch_out(deploy_runs: DeployRuns, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("torch_path")
    assert predict_main(["--checkpoint", str(deploy_runs.export("ccl")), "--input", str(inputs), "--out", str(out),
                         "--batch-size", "4"]) == 0
    return out


def files_of(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def read_scores(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv") as f:
        return list(csv.DictReader(f))


def assert_same_outputs(got: Path, want: Path) -> None:
    """Same files; same paths and decisions; scores and heatmaps equal up to float32 rounding of the runtimes."""
    assert files_of(got) == files_of(want)
    assert len([f for f in files_of(want) if f.startswith("heatmaps/")]) == 32  # 30 demo images, wide, gray
    rows, want_rows = read_scores(got), read_scores(want)
    assert [(r["path"], r["anomalous"]) for r in rows] == [(r["path"], r["anomalous"]) for r in want_rows]
    assert {r["anomalous"] for r in want_rows} == {"yes", "no"}  # the stored threshold splits these images
    np.testing.assert_allclose([float(r["score"]) for r in rows], [float(r["score"]) for r in want_rows], rtol=2e-5)
    assert (got / "skipped.csv").read_bytes() == (want / "skipped.csv").read_bytes()
    for name in (f for f in files_of(want) if f.startswith("heatmaps/")):
        a, b = cv2.imread(str(got / name)).astype(int), cv2.imread(str(want / name)).astype(int)
        assert a.shape == b.shape
        # A map value on a colour-bin boundary may land one bin over: a few pixels, a few levels
        # (measured: 30 of 32 heatmaps pixel-identical, at most 0.03% of the pixels 2 levels off).
        assert (a != b).any(axis=2).mean() <= 0.002 and np.abs(a - b).max() <= 4, name


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_model_writes_the_same_files_as_the_torch_path(deploy_runs: DeployRuns, inputs: Path,
                                                                torch_out: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    assert predict_main(["--model", str(deploy_runs.deployed("ccl", fmt)), "--input", str(inputs), "--out", str(out),
                         "--batch-size", "4"]) == 0
    assert_same_outputs(out, torch_out)


def test_predict_runs_where_torch_cannot_be_imported(deploy_runs: DeployRuns, inputs: Path, torch_out: Path,
                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}
    control = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert control.returncode != 0 and "this process has no torch" in control.stderr
    for fmt in ("onnx", "openvino"):
        out = tmp_path / f"out_{fmt}"
        proc = subprocess.run([sys.executable, str(REPO / "launch" / "predict.py"), "--model",
                               str(deploy_runs.deployed("ccl", fmt)), "--input", str(inputs), "--out", str(out),
                               "--batch-size", "4", "--threads", "1"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "32 images scored" in proc.stdout and "broken.png" in proc.stdout
        assert_same_outputs(out, torch_out)
    pt = subprocess.run([sys.executable, str(REPO / "launch" / "predict.py"), "--model",
                         str(deploy_runs.deployed("ccl", "torchscript")), "--input", str(inputs), "--out",
                         str(tmp_path / "out_pt"), "--trust-torchscript"],
                        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert pt.returncode == 2 and "this model needs torch" in pt.stderr  # TorchScript does need it: said clearly
    assert not (tmp_path / "out_pt").exists()
