"""pipelines.base.exits: the user's errors are one line (status 2); a ValueError from inside is a bug with its
traceback."""

from __future__ import annotations

import pytest

from pipelines.base.checks import check_loss
from pipelines.base.config import ConfigError, load_config
from pipelines.base.exits import USER_ERRORS, InputError, run_entry
from pipelines.deploy.runtime import DeployError
from pipelines.experiments.slurm import SlurmError


def _raise(err: BaseException):
    def body() -> int:
        raise err

    return body


def test_user_errors_are_one_line_and_other_value_errors_keep_their_traceback(capsys: pytest.CaptureFixture) -> None:
    for err in (ConfigError("configs/x.yaml: bad"), DeployError("model.onnx: bad"), SlurmError("SLURM_NNODES: bad"),
                InputError("--out: bad"), FileNotFoundError(2, "No such file", "/nope")):
        assert isinstance(err, USER_ERRORS) and run_entry(_raise(err), USER_ERRORS) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {err}"]
    assert run_entry(_raise(ValueError("internal: shapes differ")), USER_ERRORS) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and ", in body\n    raise err" in err and err.rstrip().endswith("shapes differ")


@pytest.mark.parametrize("override, message", [
    ("loss.local_window=4", "loss.local_window=4 must be a positive odd integer or 'full'"),
    ("loss.local_window=-1", "loss.local_window=-1 must be"),
    ("loss.local_scales=[0,3]", "loss.local_scales=[0, 3] must index the 3 teacher scales"),
    ("loss.local_scales=[]", "loss.local_scales=[] must index"),
    ("model.noise_prob=1.5", "model.noise_prob=1.5 must be in [0, 1]"),
    ("model.noise_std=-1", "model.noise_std=-1.0 must be >= 0"),  # refused when the config loads
])
def test_loss_values_the_model_would_refuse_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_loss(load_config(None, [override]))
    assert message in str(err.value)
    for good in ("loss.local_window=full", "loss.local_window=5", "loss.local_scales=[2]", "model.noise_prob=1"):
        check_loss(load_config(None, [good]))
