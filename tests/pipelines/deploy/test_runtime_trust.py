"""pipelines.deploy.runtime trusts nothing it did not write: a TorchScript file is refused without the opt-in (before
torch reads it), and a model file that differs from the sha256 in its info.json is refused by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import pipelines.deploy.runtime as runtime
from launch.predict import main as predict_main
from pipelines.deploy.runtime import DEPLOY_VERSION, DeployError, load_deployed


def fake_export(root: Path, fmt: str, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    info = {"deploy_version": DEPLOY_VERSION, "format": fmt, "image_size": 64, "batch": "dynamic",
            "input": {"kind": "uint8"}, "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (root / "info.json").write_text(json.dumps(info))
    return root / runtime.FORMATS[fmt]


def test_torchscript_needs_the_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    opened = []
    monkeypatch.setitem(runtime._BACKENDS, "torchscript",
                        lambda path, threads, precision: (opened.append(path), (None, None))[1])
    path = fake_export(tmp_path / "pt", "torchscript", {"model.pt": b"a program"})
    with pytest.raises(DeployError, match="a TorchScript file is a program: loading it runs whatever code") as err:
        load_deployed(path)
    assert "--trust-torchscript" in str(err.value) and "ONNX or OpenVINO" in str(err.value) and not opened
    (tmp_path / "in").mkdir()
    assert predict_main(["--model", str(path), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith(f"error: {path}: refused: a TorchScript file is a program") and not opened
    load_deployed(path, trust_torchscript=True)
    assert opened == [path]  # with the opt-in the runtime opens it


@pytest.mark.parametrize("fmt, files, swapped", [
    ("onnx", {"model.onnx": b"graph"}, "model.onnx"),
    ("openvino", {"model.xml": b"<net/>", "model.bin": b"weights"}, "model.bin"),
    ("torchscript", {"model.pt": b"a program"}, "model.pt"),
])
def test_a_swapped_model_file_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                                                 files: dict[str, bytes], swapped: str) -> None:
    monkeypatch.setitem(runtime._BACKENDS, fmt,
                        lambda path, threads, precision: pytest.fail("the runtime opened the file"))
    path = fake_export(tmp_path / fmt, fmt, files)
    (path.parent / swapped).write_bytes(b"someone else's " + files[swapped])
    with pytest.raises(DeployError, match=rf"{swapped}: sha256 [0-9a-f]{{16}}\.\.\. differs from .*info\.json"):
        load_deployed(path, trust_torchscript=True)
    info = json.loads((path.parent / "info.json").read_text())
    (path.parent / "info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "files"}))
    with pytest.raises(DeployError, match="no sha256 of the model files"):
        load_deployed(path, trust_torchscript=True)
