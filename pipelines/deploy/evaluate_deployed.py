"""Evaluate an exported graph (any format and precision) on test shards, as a training export is evaluated.

    result = run_deployed_evaluation("deploy/int8/model.xml", ["data/shards/mvtec"], "deploy/int8/eval")

The graph runs in its own runtime (ONNX Runtime, OpenVINO) in this one process; the streaming evaluator
is the training export's (``pipelines.evaluation.evaluate.evaluate_scorer``): same plan, same metrics,
same reports. This is how a quantized or half-precision export's accuracy is measured against fp32.
Nothing is written into the export: the threshold of this evaluation stays in ``OUT/metrics.json``
(the export keeps the one its info.json was written with).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.base.config import load_config
from pipelines.deploy.runtime import DeployedModel, load_deployed
from pipelines.evaluation.evaluate import Scorer, evaluate_scorer, open_test_shards, set_aside_outputs
from shard_format.atomic import check_writable


def deployed_scorer(model: DeployedModel) -> Scorer:
    """The evaluator's (B, 3, S, S) uint8 batches through the exported graph (which takes images only: the
    classes are not needed by a graph that is not class-conditioned, and a conditioned one is not exported)."""

    def score(images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = model(np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy()))  # (B, S, S, 3) uint8 RGB
        return torch.from_numpy(np.asarray(maps, np.float32)), torch.from_numpy(np.asarray(scores, np.float32))

    return score


def run_deployed_evaluation(model_path: str | Path, shards: Sequence[str | Path], out_dir: str | Path | None = None,
                            vis: int | None = None, overrides: Sequence[str] = (), threads: int | None = None,
                            score_range: tuple[float, float] | str | None = "auto",
                            trust_torchscript: bool = False) -> dict[str, Any]:
    """``launch/evaluate.py --model``: score the test split of ``shards`` with the exported graph; reports in
    ``out_dir`` (default: ``eval/`` beside the model file). ``overrides``: ``eval.*`` and ``data.*`` settings."""
    model = load_deployed(model_path, threads, trust_torchscript)
    cfg = load_config(None, [*overrides, f"data.image_size={model.image_size}"])  # the graph's size, always
    shard_set = open_test_shards(cfg, shards)
    out = Path(out_dir) if out_dir is not None else model.path.parent / "eval"
    check_writable(out, "--out")
    set_aside_outputs(out)
    result = evaluate_scorer(deployed_scorer(model), shard_set, cfg, None, out, None, None, vis, score_range)
    result["deployed"] = {"model": str(model.path), "format": model.info["format"], "precision": model.precision}
    return result
