"""Export round trip: what evaluation and prediction load is the model that was trained."""

from __future__ import annotations

import pytest
import torch

from pipelines.base.config import load_config
from pipelines.base.model import build_model, load_export, save_export

TINY = ["model.teacher=resnet18", "model.pretrained=none", "model.projector=2-mlp", "data.image_size=64"]


@pytest.mark.slow
def test_export_round_trip_rebuilds_the_same_model(tmp_path):
    cfg = load_config(None, TINY)
    torch.manual_seed(123)  # the global RNG must not decide the teacher's random weights
    model = build_model(cfg).eval()
    with torch.no_grad():  # make the trainable part differ from a fresh build
        for p in model.decoder.parameters():
            p.add_(0.01)
    save_export(model, cfg, tmp_path / "export", {"step": 7})
    torch.manual_seed(999)
    loaded, loaded_cfg = load_export(tmp_path / "export")
    assert loaded_cfg == cfg
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(images)["anomaly_map"], loaded(images)["anomaly_map"])


def test_random_teacher_depends_on_run_seed_only():
    first = build_model(load_config(None, TINY)).teacher.state_dict()
    torch.manual_seed(5)
    again = build_model(load_config(None, TINY)).teacher.state_dict()
    other = build_model(load_config(None, TINY + ["run.seed=1"])).teacher.state_dict()
    key = next(k for k, v in first.items() if v.dtype.is_floating_point and v.numel() > 1)
    assert torch.equal(first[key], again[key])
    assert not torch.equal(first[key], other[key])
