"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest


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
