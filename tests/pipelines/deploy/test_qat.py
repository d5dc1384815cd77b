"""launch/qat.py: the student fine-tuned through simulated INT8, the teacher, classes and config untouched, no
threshold carried over, the simulated loss lowered, and what it refuses to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch.qat import main as qat_main
from pipelines.base.model import load_export
from tests.pipelines.deploy_fixtures import DeployRuns

pytestmark = pytest.mark.slow  # a fine-tuning of the fixture's model


def fine_tune(runs: DeployRuns, out: Path, *extra: str) -> int:
    return qat_main(["--checkpoint", str(runs.export("joint_rd")), "--out", str(out), "--shards", str(runs.build),
                     "--images", "8", "--batch", "4", "--lr", "1e-3", *extra])


def test_qat_trains_the_student_through_int8_and_keeps_the_rest(deploy_runs: DeployRuns, tmp_path: Path) -> None:
    out = tmp_path / "export-int8"
    assert fine_tune(deploy_runs, out, "--epochs", "2") == 0
    source = deploy_runs.export("joint_rd")
    before, after = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    teacher = [k for k in before if k.startswith("teacher.")]
    student = [k for k in before if not k.startswith("teacher.") and before[k].is_floating_point()]
    assert all(torch.equal(before[k], after[k]) for k in teacher)  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in student)
    assert (out / "config.yaml").read_text() == (source / "config.yaml").read_text()
    info, old = json.loads((out / "info.json").read_text()), json.loads((source / "info.json").read_text())
    assert old["image_threshold"] is not None and info["image_threshold"] is None  # another model's scores
    assert info["class_index"] == old["class_index"]
    qat = info["qat"]
    assert qat["from"] == str(source) and qat["epochs"] == 2 and qat["images"]["images"] == 8
    losses = qat["simulated_int8_loss"]  # before, after epoch 1, after epoch 2
    assert len(losses) == 3 and losses[-1] < losses[0]
    model, _ = load_export(out)  # an ordinary export: its weights load as written
    loaded = model.trainable_state_dict()
    assert all(torch.equal(loaded[k], after[k]) for k in student)
    # again into the same directory: an earlier output of this tool is replaced
    assert fine_tune(deploy_runs, out, "--epochs", "1") == 0
    assert json.loads((out / "info.json").read_text())["qat"]["epochs"] == 1


def test_qat_refuses_to_overwrite_what_it_did_not_write(deploy_runs: DeployRuns, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert fine_tune(deploy_runs, other) != 0
    assert "is not an output of launch/qat.py" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"
    assert fine_tune(deploy_runs, tmp_path / "x", "--epochs", "0") != 0
    assert "--epochs must be at least 1" in capsys.readouterr().err
