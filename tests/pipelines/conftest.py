"""Session fixtures shared by the deploy tests (export, runtime, prediction, report)."""

from __future__ import annotations

import pytest

from tests.pipelines.deploy_fixtures import DeployRuns


@pytest.fixture(scope="session")
def deploy_runs(tmp_path_factory: pytest.TempPathFactory) -> DeployRuns:
    return DeployRuns(tmp_path_factory.mktemp("deploy"))
