"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest

# a real S3 server on localhost (SeaweedFS) and a fault-injecting proxy in front of it, for any test package
from tests.object_store import fault_proxy_fixture, s3_server_fixture  # noqa: F401


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's hub download replaced by random initialisation (tests never download); everything else,
    the weights tag timm resolves for a model name included, is timm's own."""
    import timm

    real = timm.create_model

    def create(name, pretrained=False, **kwargs):
        kwargs.pop("pretrained_cfg_overlay", None)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
