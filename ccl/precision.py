"""Losses and anomaly maps in float32 whatever autocast or the model's dtype (bf16 / fp16 training).

Contrastive logits are cosines over a temperature of 0.1 that go through log-sum-exp, and the KD loss
and the anomaly map are 1 - cosine: bf16 keeps 8 significant bits, so a cosine near 1 would be
quantised in steps of ~0.004 (0.04 in logit units) and 1 - cos of a well-reconstructed feature would
often be exactly 0. ``float32_math`` runs a function with autocast off and bf16 / fp16 tensor
arguments widened to float32; float32 and float64 arguments pass unchanged (the same tensors), so
full-precision results are bit-identical with or without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
HALF = (torch.float16, torch.bfloat16)


def widen(value: Any) -> Any:
    """``value`` with every bf16 / fp16 tensor (also inside lists and tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in HALF else value
    if isinstance(value, (list, tuple)):
        return type(value)(widen(v) for v in value)
    return value


def _device_type(value: Any) -> str | None:
    if isinstance(value, torch.Tensor):
        return value.device.type
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _device_type(v)
            if found is not None:
                return found
    return None


def float32_math(fn: F) -> F:
    """Decorator: ``fn`` with autocast off (on its tensors' device) and half-precision tensor arguments widened."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = _device_type(list(args) + list(kwargs.values()))
        args, kwargs = widen(args), {k: widen(v) for k, v in kwargs.items()}
        if device is None or not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
