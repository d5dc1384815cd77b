"""InferenceGraph: the deployable graph gives the training module's inference maps and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccl.data.transforms import normalize
from ccl.models import RDCCL
from ccl.models.inference_graph import InferenceGraph


@pytest.mark.parametrize("projector", ["2-mlp", "none"])
def test_graph_equals_the_model_forward_for_uint8_and_float_input(projector: str) -> None:
    torch.manual_seed(0)
    model = RDCCL(teacher="resnet18", pretrained="none", projector=projector, sigma=2.0).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    normalised = torch.stack([normalize(im) for im in images])
    with torch.no_grad():
        want = model(normalised)
        uint8_maps, uint8_scores = InferenceGraph(model, "uint8")(torch.from_numpy(images))
        float_maps, float_scores = InferenceGraph(model, "float")(normalised)
    for maps, scores in ((uint8_maps, uint8_scores), (float_maps, float_scores)):
        torch.testing.assert_close(maps, want["anomaly_map"], rtol=0, atol=1e-6)
        torch.testing.assert_close(scores, want["score"], rtol=0, atol=1e-6)
    maps, scores = InferenceGraph(model, "uint8").run_numpy(images)
    assert maps.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(maps, want["anomaly_map"].numpy(), rtol=0, atol=1e-6)


def test_graph_stays_in_eval_mode_and_rejects_unknown_input() -> None:
    model = RDCCL(teacher="resnet18", pretrained="none", projector="none")
    graph = InferenceGraph(model, "uint8").train()
    assert not graph.training and not any(m.training for m in graph.modules())
    with pytest.raises(ValueError, match="input_kind"):
        InferenceGraph(model, "bgr")
