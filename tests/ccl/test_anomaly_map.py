"""Anomaly maps: zero for a perfect student, localised for a perturbed patch, scipy's blur."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The package re-exports the function under the module's name, so fetch the module itself.
am = importlib.import_module("ccl.metrics.anomaly_map")


def _feats(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 8, 16, 16, generator=g), torch.randn(2, 16, 8, 8, generator=g)]


def test_identical_features_give_zero_map():
    t = _feats()
    maps = am.anomaly_map(t, [x.clone() for x in t], size=(64, 64))
    assert maps.shape == (2, 64, 64)
    assert maps.abs().max() < 1e-5
    assert am.image_score(maps).abs().max() < 1e-5


def test_perturbed_patch_lights_up_where_it_was():
    t = _feats()
    s = [x.clone() for x in t]
    s[0][1, :, 2:5, 10:13] = -s[0][1, :, 2:5, 10:13]  # sample 1, rows 2-4, cols 10-12 of the 16x16 scale
    maps = am.anomaly_map(t, s, size=(64, 64))
    assert maps[0].abs().max() < 1e-5  # the untouched sample stays clean
    y, x = divmod(int(maps[1].argmax()), 64)
    assert 8 <= y <= 20 and 40 <= x <= 52  # the patch, scaled by 4
    scores = am.image_score(maps)
    assert scores[1] > 10 * scores[0] + 0.1


def test_map_matches_reference_pipeline_with_scipy_blur():
    ndimage = pytest.importorskip("scipy.ndimage")
    t = _feats(1)
    s = [x + 0.5 * torch.randn_like(x) for x in t]
    got = am.anomaly_map(t, s, size=(48, 40), sigma=4.0, reduce="sum")
    for b in range(2):
        total = np.zeros((48, 40))
        for ti, si in zip(t, s):
            d = 1 - F.cosine_similarity(ti[b : b + 1], si[b : b + 1], dim=1)[:, None]
            total += F.interpolate(d, size=(48, 40), mode="bilinear", align_corners=True)[0, 0].double().numpy()
        ref = ndimage.gaussian_filter(total, sigma=4)
        np.testing.assert_allclose(got[b].double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_reductions_differ_and_are_checked():
    t = _feats(2)
    s = [x + torch.randn_like(x) for x in t]
    total = am.anomaly_map(t, s, 32, sigma=0)
    mean = am.anomaly_map(t, s, 32, sigma=0, reduce="mean")
    prod = am.anomaly_map(t, s, 32, sigma=0, reduce="product")
    torch.testing.assert_close(mean * 2, total)
    assert not torch.allclose(prod, total)
    with pytest.raises(ValueError, match="reduce"):
        am.anomaly_map(t, s, 32, reduce="max")


def test_kernel_is_built_once():
    am._kernel_1d.cache_clear()
    am._kernel_on.cache_clear()
    t = _feats(3)
    for _ in range(3):
        am.anomaly_map(t, t, 32, sigma=4.0)
    assert am._kernel_1d.cache_info().misses == 1
    assert am._kernel_on.cache_info().misses == 1 and am._kernel_on.cache_info().hits >= 2
    assert am._kernel_1d(4.0).numel() == 2 * int(4 * 4.0 + 0.5) + 1


class _Blur(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return am.gaussian_blur(x, 2.0)


def _clear_caches() -> None:
    for cache in (am._kernel_1d, am._kernel_on, am._symmetric_index):
        cache.cache_clear()


def test_export_leaves_the_eager_blur_intact():
    """torch.export (the ONNX exporter) on a cold cache must not leave fake tensors in it."""
    _clear_caches()
    x = torch.rand(2, 12, 10)
    for strict in (False, True):  # a second export in the same process, both tracing modes
        torch.export.export(_Blur(), (x,), strict=strict)
    out = am.gaussian_blur(x, 2.0)
    _clear_caches()
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, am.gaussian_blur(x, 2.0), rtol=0, atol=0)
