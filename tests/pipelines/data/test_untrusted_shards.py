"""A shard build from someone else is data, never a command or a path (issue 10 item 3).

A crafted manifest once ran ``pipe:`` commands through a shell in training, evaluation and the
pseudo-class tool (also via ``data.shards=[.]``, where ``Path(".") / "pipe:cmd"`` is ``"pipe:cmd"``).
Every entry point now refuses any shard name that is not a file name of the build, before reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shard_format.builds import open_builds
from shard_format.errors import ShardError
from tests.pipelines.shard_fixtures import tiny_export, write_test_build
from tests.pipelines.train_fixtures import write_build

BAD_NAMES = ["pipe:touch {marker}", "{marker}", "../elsewhere/train-000000.tar", "sub/train-000000.tar",
             "train-000000.tar; touch {marker}", "file:train-000000.tar", "s3://bucket/train-000000.tar"]


def _craft(build: Path, name: str) -> None:
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["shards"][0]["name"] = name
    (build / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_shard_name_that_is_not_a_file_of_the_build_is_refused(tmp_path: Path, name: str) -> None:
    build = write_build(tmp_path / "b", "toy", ["a", "b"], [4], size=8)
    _craft(build, name.format(marker=tmp_path / "ran"))
    with pytest.raises(ShardError, match=r"is not a shard file name of this build .*refused"):
        open_builds([build])


def test_no_entry_point_runs_a_command_from_a_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from launch.evaluate import main as evaluate_main
    from launch.train import main as train_main
    from shard_tools.pseudo_classes import main as pseudo_main

    marker = tmp_path / "ran"
    train = write_build(tmp_path / "train", "toy", ["a", "b", "c", "d"], [8, 8], size=16, val_sizes=[4])
    test = write_test_build(tmp_path / "test", "toy", ["a", "b"], [4], size=16)
    for build in (train, test):
        _craft(build, f"pipe:touch {marker}")
    export = tiny_export(tmp_path / "run" / "export", 32)
    (tmp_path / "empty.yaml").write_text("{}\n")
    monkeypatch.chdir(train)  # data.shards=[.]: the join that used to leave "pipe:..." intact
    assert train_main(["--config", str(tmp_path / "empty.yaml"), "data.shards=[.]", f"run.dir={tmp_path / 'r'}",
                       "model.teacher=resnet18", "model.pretrained=none", "data.batch_size=8",
                       "data.classes_per_batch=4"]) == 2
    assert "is not a shard file name of this build" in capsys.readouterr().err
    monkeypatch.chdir(test)
    assert evaluate_main(["--checkpoint", str(export), "--shards", ".", "--out", str(tmp_path / "eval")]) == 2
    assert "is not a shard file name of this build" in capsys.readouterr().err
    monkeypatch.chdir(train)
    assert pseudo_main(["--shards", ".", "--k", "2", "--teacher", "resnet18", "--pretrained", "none"]) == 2
    assert "is not a shard file name of this build" in capsys.readouterr().err
    assert not marker.exists()
