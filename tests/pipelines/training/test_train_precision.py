"""train.precision=bf16 under plain DDP (Accelerate's autocast, float32 losses) with train.compile=true,
on 2 gloo processes, against one float32 eager process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.pipelines.train_fixtures import toy_training_dir
from tests.pipelines.training.test_train import _debug, _losses, _one, _two

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_training_dir(tmp_path_factory.mktemp("precision"))


def test_bf16_autocast_and_compile_under_ddp_follow_float32(data: Path) -> None:
    # aot_eager: the compiled path without inductor's C++ build (minutes on 2 cores; see tests/ccl/test_compile.py)
    _two(data, "bf16", "train.precision=bf16", "train.compile=true", "train.compile_backend=aot_eager")
    _one(data, "fp32")
    r0, r1 = _debug(data / "bf16", 0), _debug(data / "bf16", 1)
    assert len(r0) == len(r1) == 4
    assert [r["checksum"] for r in r0] == [r["checksum"] for r in r1]  # DDP kept the ranks' weights equal
    assert len({r["checksum"] for r in r0}) == 4
    half, full = _losses(data / "bf16"), _losses(data / "fp32")
    assert all(math.isfinite(v) for step in half.values() for v in step.values())
    for k in ("loss", "kd", "lcl", "gcl"):
        # the first step sees the same weights and batch: only bf16 convolutions separate the two runs
        assert half[1][k] == pytest.approx(full[1][k], rel=2e-2), k
    assert half[1] != full[1]  # autocast was on
