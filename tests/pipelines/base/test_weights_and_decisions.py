"""Untrusted weights and decisions: safetensors of another dtype, shape or key set are refused naming the file and
the tensor (no silent cast); NaN weights, a non-finite threshold and non-finite scores stop predict (fail closed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from launch.predict import main as predict_main
from pipelines.base.exits import InputError
from pipelines.base.model import WEIGHTS_NAME, load_export
from pipelines.deploy.predict import predict, resolve_threshold
from tests.pipelines.shard_fixtures import tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("weights") / "export", 64)


def _with_weights(export: Path, to: Path, change) -> Path:
    shutil.copytree(export, to)
    state = load_file(str(to / WEIGHTS_NAME))
    change(state)
    save_file(state, str(to / WEIGHTS_NAME))
    return to


def _first_float(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in sorted(state.items()) if v.is_floating_point() and v.ndim > 1)


@pytest.mark.parametrize("case, message", [
    ("float16", "is float16, the model's is float32 (not cast"),
    ("float64", "is float64, the model's is float32 (not cast"),
    ("int8", "is int8, the model's is float32 (not cast"),
    ("shape", "has shape"),
    ("extra", "tensor 'decoder.extra' is not part of the model"),
    ("missing", "is missing"),
    ("nan", "holds non-finite values (NaN or inf)"),
])
def test_weights_that_do_not_fit_are_one_line_naming_file_and_tensor(export: Path, tmp_path: Path, case: str,
                                                                     message: str) -> None:
    name = _first_float(load_file(str(export / WEIGHTS_NAME)))

    def change(state: dict[str, torch.Tensor]) -> None:
        if case in ("float16", "float64", "int8"):
            state[name] = state[name].to(getattr(torch, case))
        elif case == "shape":
            state[name] = state[name][:1].clone()
        elif case == "extra":
            state["decoder.extra"] = torch.zeros(2)
        elif case == "missing":
            del state[name]
        else:
            state[name] = state[name].clone()
            state[name].view(-1)[0] = float("nan")

    broken = _with_weights(export, tmp_path / case, change)
    with pytest.raises(InputError) as err:
        load_export(broken)
    text = str(err.value)
    assert text.startswith(f"{broken / WEIGHTS_NAME}: tensor ") and message in text and "\n" not in text
    if case != "extra":
        assert repr(name) in text


def write_images(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return root


def test_nan_weights_and_non_finite_thresholds_fail_closed(export: Path, tmp_path: Path, capsys) -> None:
    images = write_images(tmp_path / "in")
    nan = _with_weights(export, tmp_path / "nan", lambda s: s.update({k: torch.full_like(v, float("nan"))
                                                                      for k, v in s.items() if v.is_floating_point()}))
    args = ["--input", str(images), "--out", str(tmp_path / "out")]
    assert predict_main(["--checkpoint", str(nan), *args, "--threshold", "1.0"]) == 2
    err = capsys.readouterr().err
    assert "holds non-finite values" in err and str(nan / WEIGHTS_NAME) in err and len(err.strip().splitlines()) == 1
    for bad in ("nan", "inf", "-inf", "1e999"):
        assert predict_main(["--checkpoint", str(export), *args, f"--threshold={bad}"]) == 2
        assert f"--threshold {bad}: not a finite number" in capsys.readouterr().err
    for size in ("0", "-1"):
        assert predict_main(["--checkpoint", str(export), *args, "--batch-size", size]) == 2
        assert f"--batch-size must be a whole number >= 1, got {size}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    stored = tmp_path / "stored"
    shutil.copytree(export, stored)
    for value in ("NaN", "Infinity", '"0.5"'):
        (stored / "info.json").write_text(f'{{"image_threshold": {value}}}')
        with pytest.raises(InputError, match="image_threshold .* is not a finite number"):
            resolve_threshold("auto", stored)
    (stored / "info.json").write_text(json.dumps({"image_threshold": 0.5}))
    assert resolve_threshold("auto", stored) == 0.5


def test_non_finite_scores_stop_prediction(tmp_path: Path) -> None:
    images = write_images(tmp_path / "in")

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.ones(len(batch), np.float32)
        scores[-1] = np.nan
        return np.zeros(batch.shape[:3], np.float32), scores

    with pytest.raises(InputError, match=r"non-finite score or anomaly map \(nan\) for .*2\.png"):
        predict(score, 32, images, tmp_path / "out", threshold=0.5, vis=False)
    assert not (tmp_path / "out" / "scores.csv").exists()
    with pytest.raises(InputError, match="threshold nan: not a finite number"):
        predict(score, 32, images, tmp_path / "out", threshold=float("nan"))
