"""launch/export.py --precision: fp16 and INT8 graphs against fp32 on the demo test set, the calibration set
recorded in info.json (checked against the shards read independently), the deployed graph evaluated like a
training export, and one-line refusals where a format lacks a precision."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from launch.evaluate import main as evaluate_main
from launch.export import main as export_main
from pipelines.deploy.precision import PARITY_MIN_CORRELATION, PARITY_TOLERANCE
from pipelines.deploy.runtime import load_deployed
from tests.pipelines.deploy_fixtures import DeployRuns

pytest.importorskip("onnxruntime", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytest.importorskip("openvino", reason="the deploy tests need the extra: pip install -e '.[deploy]'")
pytestmark = pytest.mark.slow  # end to end: evaluated exports through the exporters and runtimes


def deployed_outputs(runs: DeployRuns, fmt: str, *extra: str) -> tuple[np.ndarray, np.ndarray]:
    images, _, _ = runs.test_images()
    return load_deployed(runs.deployed("ccl", fmt, *extra))(images)


def relative_difference(maps: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(maps - reference).max() / (reference.max() - reference.min()))


# The reduced-precision exports take a fixed batch (4): a dynamic batch doubles torch.onnx.export's time and is
# covered by the fp32 exports (tests/pipelines/deploy/test_export.py). OpenVINO's fp16 (its fp32 graph saved with
# fp16 weights) is measured by bench/precision_accuracy.py, not here: each export costs CI half a minute.
FIXED = ("--batch", "4")


def test_fp16_export_keeps_the_fp32_maps_within_its_tolerance(deploy_runs: DeployRuns) -> None:
    want_maps, want_scores = deployed_outputs(deploy_runs, "onnx")
    maps, scores = deployed_outputs(deploy_runs, "onnx", "--precision", "fp16", *FIXED)
    assert relative_difference(maps, want_maps) <= PARITY_TOLERANCE["fp16"]
    assert relative_difference(maps, want_maps) > 0  # really another precision, not the fp32 file again
    path = deploy_runs.deployed("ccl", "onnx", "--precision", "fp16", *FIXED)
    info = json.loads((path.parent / "info.json").read_text())
    assert info["precision"] == "fp16" and info["calibration"] is None
    # half-width weights
    assert path.stat().st_size < 0.6 * deploy_runs.deployed("ccl", "onnx").stat().st_size


def int8_args(runs: DeployRuns) -> tuple[str, ...]:
    # the fixture's training config names no shards of its own: the calibration build is given
    return ("--precision", "int8", "--calibration-images", "6", "--calibration-shards", str(runs.build), *FIXED)


def normal_train_keys(build: Path, n: int) -> list[str]:
    """The calibration choice computed from the tar files: ceil(n / shards) normal samples from each train shard."""
    manifest = json.loads((build / "manifest.json").read_text())
    shards = [s for s in manifest["shards"] if s["split"] == "train" and s["samples"] > 0]
    per_shard, keys = -(-n // len(shards)), []
    for shard in shards:
        taken = 0
        with tarfile.open(build / shard["name"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json") and taken < per_shard and len(keys) < n:
                    meta = json.loads(tar.extractfile(member).read())
                    if meta["label"] == 0:
                        keys.append(member.name[: -len(".json")])
                        taken += 1
    return keys


@pytest.mark.parametrize("fmt,quantizer", [("onnx", "QuantizeLinear"), ("openvino", "FakeQuantize")])
def test_int8_export_is_quantized_on_recorded_normal_training_images(deploy_runs: DeployRuns, fmt: str,
                                                                     quantizer: str) -> None:
    path = deploy_runs.deployed("ccl", fmt, *int8_args(deploy_runs))
    info = json.loads((path.parent / "info.json").read_text())
    keys = normal_train_keys(deploy_runs.build, 6)
    assert info["precision"] == "int8"
    assert info["calibration"]["images"] == len(keys) == 6
    assert info["calibration"]["keys_sha256"] == hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert info["parity"]["map_correlation"] >= PARITY_MIN_CORRELATION["int8"]
    if fmt == "onnx":
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    else:
        ops = [line.split('type="')[1].split('"')[0] for line in path.read_text().splitlines() if 'type="' in line]
    assert ops.count(quantizer) >= 10  # the convolutions' inputs are quantized, not only a token few
    maps, _ = deployed_outputs(deploy_runs, fmt, *int8_args(deploy_runs))
    want_maps, _ = deployed_outputs(deploy_runs, fmt)
    assert 0 < relative_difference(maps, want_maps)


def test_a_deployed_graph_is_evaluated_like_its_training_export(deploy_runs: DeployRuns, tmp_path: Path,
                                                                capsys) -> None:
    """The fp32 ONNX graph through launch/evaluate.py --model gives the training export's metrics."""
    path = deploy_runs.deployed("ccl", "onnx")
    assert evaluate_main(["--model", str(path), "--shards", str(deploy_runs.build), "--out", str(tmp_path / "eval"),
                          "--vis", "0", "eval.num_workers=0"]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    want = json.loads((deploy_runs.root / "ccl" / "eval" / "metrics.json").read_text())
    assert got["images"] == want["images"] > 0
    for metric, value in want["mean"].items():
        assert got["mean"][metric] == pytest.approx(value, abs=1e-4), metric
    assert "test images scored" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--format", "torchscript", "--precision", "int8"], "--format torchscript has no int8 export"),
    (["--format", "onnx", "--precision", "int8", "--calibration-images", "0", "--calibration-shards", "BUILD"],
     "--calibration-images must be"),
    (["--format", "onnx", "--precision", "int8"], "its training config names no shards; give --calibration-shards"),
    (["--format", "onnx", "--precision", "int8", "--calibration-shards", "/nonexistent/build"], "/nonexistent/build"),
])
def test_a_precision_a_format_lacks_is_refused_in_one_line(deploy_runs: DeployRuns, tmp_path: Path, capsys,
                                                           args: list[str], message: str) -> None:
    out, checkpoint = tmp_path / "deploy", str(deploy_runs.export("ccl"))
    capsys.readouterr()  # the fixture's own output
    args = [str(deploy_runs.build) if a == "BUILD" else a for a in args]
    assert export_main(["--checkpoint", checkpoint, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()  # nothing written
