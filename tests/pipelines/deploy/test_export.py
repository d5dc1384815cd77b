"""launch/export.py: every format against the torch model on the demo test set, both model kinds, info.json,
and bad input (an old or foreign export, a corrupt model file, wrong input) with errors that name the file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ccl.data.transforms import normalize
from launch.export import main as export_main
from launch.predict import main as predict_main
from pipelines.base.model import load_export, read_info
from pipelines.deploy.runtime import DeployError, load_deployed
from tests.pipelines.deploy_fixtures import SIZE, DeployRuns

pytest.importorskip("onnxruntime", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytest.importorskip("openvino", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytestmark = pytest.mark.slow  # end to end: evaluated exports through the three exporters and runtimes

# (model, format, extra export arguments): each format for both models; a fixed batch (padded by the
# runtime: 30 images in chunks of 4) and a graph taking normalised float input ride along.
# Every format with each model's graph once in all; OpenVINO converts the ONNX graph, so the CCL model's case
# covers its path for both (the Joint RD one cost a minute of CI for nothing the others do not check).
CASES = [("ccl", "onnx", ()), ("ccl", "openvino", ()), ("ccl", "torchscript", ()),
         ("joint_rd", "onnx", ("--batch", "4")), ("joint_rd", "torchscript", ("--input", "float"))]
_reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def torch_reference(runs: DeployRuns, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps and scores of the training forward (RDCCL inference), one image at a time."""
    if name not in _reference:
        model, _ = load_export(runs.export(name))
        images, _, _ = runs.test_images()
        with torch.no_grad():
            outs = [model(normalize(im)[None]) for im in images]
        _reference[name] = (np.concatenate([o["anomaly_map"].numpy() for o in outs]),
                            np.concatenate([o["score"].numpy() for o in outs]))
    return _reference[name]


@pytest.mark.parametrize("name,fmt,extra", CASES, ids=["-".join((n, f, *e)) for n, f, e in CASES])
def test_exported_graph_matches_the_torch_model(deploy_runs: DeployRuns, name: str, fmt: str, extra: tuple) -> None:
    path = deploy_runs.deployed(name, fmt, *extra)
    images, labels, _ = deploy_runs.test_images()
    want_maps, want_scores = torch_reference(deploy_runs, name)
    maps, scores = load_deployed(path, trust_torchscript=fmt == "torchscript")(images)  # the test's own file
    assert maps.shape == (len(images), SIZE, SIZE) and scores.shape == (len(images),)
    span = want_maps.max() - want_maps.min()
    assert np.abs(maps - want_maps).max() <= 1e-4 * span
    threshold = read_info(deploy_runs.export(name))["image_threshold"]
    decisions = want_scores >= threshold
    assert decisions.any() and not decisions.all()  # the threshold splits the set: decisions can differ
    np.testing.assert_array_equal(scores >= threshold, decisions)


@pytest.mark.parametrize("name", ["ccl", "joint_rd"])
def test_info_json_describes_the_graph_and_its_training(deploy_runs: DeployRuns, name: str) -> None:
    path = deploy_runs.deployed(name, "onnx", *(("--batch", "4") if name == "joint_rd" else ()))
    info = json.loads((path.parent / "info.json").read_text())
    export = deploy_runs.export(name)
    trained = json.loads((export / "info.json").read_text())
    config = yaml.safe_load((export / "config.yaml").read_text())
    assert info["image_threshold"] == trained["image_threshold"] is not None
    assert info["training"]["config_sha256"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    assert info["teacher"] == {"name": "mobilenetv2_100", "pretrained": "offline", "out_indices": [1, 2, 3]}
    assert info["projector"] == {"ccl": "4-cblocks", "joint_rd": "none"}[name]
    assert info["classes"] == [f"demo/{c}" for c in deploy_runs.classes()]
    assert info["image_size"] == SIZE and info["input"]["kind"] == "uint8" and info["input"]["layout"] == "NHWC"
    assert info["batch"] == ("dynamic" if name == "ccl" else 4)
    assert info["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and info["preprocessing"]["color"] == "RGB"
    assert info["parity"]["max_map_difference_relative"] <= 1e-4 and info["exporter"]["seconds"] > 0
    assert info["files"] == {"model.onnx": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_another_image_size_exports_without_the_threshold(deploy_runs: DeployRuns, tmp_path: Path, capsys) -> None:
    export = str(deploy_runs.export("ccl"))
    out = tmp_path / "at96"
    args = ["--checkpoint", export, "--format", "torchscript", "--out", str(out), "--image-size", "96"]
    assert export_main(args) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["image_size"] == 96 and info["image_threshold"] is None and "64 px" in info["image_threshold_source"]
    assert "no image threshold" in capsys.readouterr().out
    maps, _ = load_deployed(out / "model.pt", trust_torchscript=True)(np.zeros((1, 96, 96, 3), np.uint8))
    assert maps.shape == (1, 96, 96)
    images = str(deploy_runs.demo / "brick" / "test")
    trust = "--trust-torchscript"  # the file this test exported
    assert predict_main(["--model", str(out / "model.pt"), "--input", images, "--out", str(tmp_path / "p"), trust]) == 2
    assert "holds no image_threshold: evaluate the training export, then export it again" in capsys.readouterr().err
    assert predict_main(["--model", str(out / "model.pt"), "--input", images, "--out", str(tmp_path / "p"),
                         "--threshold", "3.0", "--no-vis", trust]) == 0
    assert export_main(["--checkpoint", export, "--format", "onnx", "--out", str(tmp_path / "at48"),
                        "--image-size", "48"]) == 2
    assert "--image-size 48: the model does not run at this size (use a multiple of 32)" in capsys.readouterr().err
    assert not (tmp_path / "at48").exists()


def copy_deploy(path: Path, to: Path) -> Path:
    shutil.copytree(path.parent, to)
    return to / path.name


def rehash(path: Path) -> None:
    """info.json lists the file's new sha256: what the runtime's own parser says about it is tested."""
    info = json.loads((path.parent / "info.json").read_text())
    info["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / "info.json").write_text(json.dumps(info))


def test_bad_model_files_are_refused_naming_the_file(deploy_runs: DeployRuns, tmp_path: Path, capsys) -> None:
    onnx = deploy_runs.deployed("ccl", "onnx")
    images = str(deploy_runs.demo / "brick" / "test")
    cases = {}
    corrupt = copy_deploy(onnx, tmp_path / "corrupt")
    corrupt.write_bytes(corrupt.read_bytes()[:5000])  # cut short
    cases["swapped"] = (copy_deploy(corrupt, tmp_path / "swapped"), "differs from")  # sha256 of info.json
    rehash(corrupt)
    cases["corrupt"] = (corrupt, "not a readable ONNX model")
    old = copy_deploy(onnx, tmp_path / "old")
    info = json.loads((old.parent / "info.json").read_text())
    (old.parent / "info.json").write_text(json.dumps({**info, "deploy_version": 0}))
    cases["old"] = (old, "export version 0")
    other_size = copy_deploy(onnx, tmp_path / "size")
    (other_size.parent / "info.json").write_text(json.dumps({**info, "image_size": 96}))
    cases["size"] = (other_size, "takes input")
    no_info = copy_deploy(onnx, tmp_path / "noinfo")
    (no_info.parent / "info.json").unlink()
    cases["no info"] = (no_info, "info.json is missing")
    xml = copy_deploy(deploy_runs.deployed("ccl", "openvino"), tmp_path / "xml")
    xml.write_text("<net><layers>")
    rehash(xml)
    cases["xml"] = (xml, "not an OpenVINO IR file")
    for label, (path, message) in cases.items():
        out = tmp_path / f"out_{label.replace(' ', '_')}"
        assert predict_main(["--model", str(path), "--input", images, "--out", str(out)]) == 2, label
        err = capsys.readouterr().err
        assert message in err and str(path.parent) in err, (label, err)
        assert not out.exists(), label  # nothing written


def test_input_of_another_size_or_channel_count_is_refused(deploy_runs: DeployRuns) -> None:
    model = load_deployed(deploy_runs.deployed("ccl", "onnx"))
    for bad in (np.zeros((2, SIZE, SIZE, 4), np.uint8), np.zeros((2, SIZE, SIZE + 8, 3), np.uint8),
                np.zeros((2, SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE, 3), np.uint8)):
        with pytest.raises(DeployError, match=r"model\.onnx takes \(B, 64, 64, 3\) uint8 RGB images"):
            model(bad)


def test_export_refuses_old_checkpoints_and_never_replaces_other_files(deploy_runs: DeployRuns, tmp_path: Path,
                                                                       capsys) -> None:
    export = deploy_runs.export("joint_rd")
    old = tmp_path / "old_export"
    shutil.copytree(export, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["model"]["neck_width"] = 2  # a key this version does not know: an export of another version
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--format", "torchscript", "--out"]
    assert export_main(["--checkpoint", str(old), *args, str(tmp_path / "d1")]) == 2
    assert "neck_width" in capsys.readouterr().err and not (tmp_path / "d1").exists()
    assert export_main(["--checkpoint", str(tmp_path / "nothing"), *args, str(tmp_path / "d2")]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for out, message in ((keep, "refusing to replace it"), (export, "is the checkpoint itself")):
        before = sorted(p.name for p in out.iterdir())
        assert export_main(["--checkpoint", str(export), *args, str(out)]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == before
    assert (keep / "notes.txt").read_text() == "mine"


def test_a_missing_exporter_names_the_deploy_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """Without the deploy extra: one line that says what to install, status 2 (no traceback)."""
    import sys

    monkeypatch.setitem(sys.modules, "pipelines.deploy.export", None)  # its import fails as without onnx
    assert export_main(["--checkpoint", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "install the deploy extra: pip install -e '.[deploy]'" in err and "Traceback" not in err
