"""Anomaly maps of Reverse Distillation: per-pixel cosine distance between teacher and student.

Per scale 1 - cos over channels, bilinear up-sampling (align_corners=True) to
the input size, summed over scales (or mean / product), then a Gaussian blur
with sigma 4 and kernel 2*int(4*sigma + 0.5) + 1 (scipy.ndimage.gaussian_filter's
kernel with its default 'reflect' border, i.e. the edge pixel is repeated), done
as a separable conv on the tensor. Image score = max of the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from ccl.precision import float32_math

REDUCTIONS = ("sum", "mean", "product")


@lru_cache(maxsize=8)
def _kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius int(4*sigma + 0.5), built once per sigma (float64, CPU)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@lru_cache(maxsize=32)
def _kernel_on(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _kernel_1d(sigma).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _symmetric_index(n: int, radius: int) -> torch.Tensor:
    """Indices of a half-sample symmetric padding (scipy 'reflect': d c b a | a b c d), any n >= 1."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def _constants(sigma: float, h: int, w: int, device: torch.device, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel and row / column padding indices, from the caches in eager mode.

    Under torch.export / torch.compile (ONNX and OpenVINO export) they are built afresh: a tensor
    made while tracing is a fake one, and caching it would hand it to every later call.
    """
    if not torch.compiler.is_compiling():
        k = _kernel_on(sigma, device, dtype)
        r = k.numel() // 2
        return k, _symmetric_index(h, r).to(device), _symmetric_index(w, r).to(device)
    k = _kernel_1d.__wrapped__(sigma).to(device=device, dtype=dtype)
    r = k.numel() // 2
    return k, _symmetric_index.__wrapped__(h, r).to(device), _symmetric_index.__wrapped__(w, r).to(device)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of maps (B, H, W) with scipy's kernel size and border."""
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    k, rows, cols = _constants(float(sigma), h, w, maps.device, maps.dtype)
    x = maps[:, None]  # (B, 1, H, W)
    x = x.index_select(2, rows)
    x = F.conv2d(x, k.view(1, 1, -1, 1))  # along H
    x = x.index_select(3, cols)
    x = F.conv2d(x, k.view(1, 1, 1, -1))  # along W
    return x[:, 0]


@float32_math
def anomaly_map(
    teacher_feats: Sequence[torch.Tensor],
    student_feats: Sequence[torch.Tensor],
    size: Sequence[int] | int,
    sigma: float = 4.0,
    reduce: str = "sum",
) -> torch.Tensor:
    """(B, H, W) anomaly map at `size` (H, W) from per-scale (B, C, h, w) teacher / student maps."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    maps = []
    for t, s in zip(teacher_feats, student_feats):
        d = 1 - F.cosine_similarity(t, s, dim=1)  # (B, h, w)
        maps.append(F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=True)[:, 0])
    stacked = torch.stack(maps)  # (S, B, H, W)
    if reduce == "sum":
        out = stacked.sum(0)
    elif reduce == "mean":
        out = stacked.mean(0)
    else:
        out = stacked.prod(0)
    return gaussian_blur(out, sigma)


def image_score(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score (B,) = max over the pixels of maps (B, H, W)."""
    return maps.flatten(1).amax(dim=1)
