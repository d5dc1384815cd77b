"""Quantization-aware fine-tuning: a training export -> a training export whose student expects INT8 rounding.

    info = finetune_for_int8("runs/line/export", "runs/line/export-int8", epochs=3, images=1024)

Post-training INT8 of an RD model moves its anomaly maps as much as a defect does (README "Deploy:
precision"). Here the student (projector, neck, decoder; the teacher stays frozen) is trained on normal
training images through ``ccl.models.fake_quant.Int8Simulation`` — every convolution's weights and inputs
rounded as the INT8 runtimes round them — with RD's own loss, so that it reproduces the rounded teacher.
The activation ranges are measured again after every epoch (the student's change). The result is an
ordinary training export (float weights, the same config, classes and ids) for ``launch/export.py
--precision int8``; it carries no image threshold: its scores are another model's, so evaluate it first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ccl.losses.kd import kd_loss
from ccl.models.fake_quant import Int8Simulation
from ccl.models.inference_graph import InferenceGraph
from pipelines.base.exits import InputError
from pipelines.base.model import load_export, read_info
from pipelines.deploy.calibration import image_shards, read_calibration_images, refuse_conditioned
from pipelines.training.checkpoint import check_replaceable, write_export

RANGE_IMAGES = 64  # the images every activation range is measured on (the INT8 export's calibration default)


def finetune_for_int8(checkpoint: str | Path, out_dir: str | Path, shards: Sequence[str] = (), epochs: int = 3,
                      images: int = 1024, lr: float = 1e-4, batch: int = 8, seed: int = 0) -> dict[str, Any]:
    """Write ``out_dir`` (weights, config, info.json with a ``qat`` record) from the export ``checkpoint``,
    fine-tuned ``epochs`` times over up to ``images`` normal training images of ``shards`` (default: the
    training's); returns the info written."""
    for name, value in (("--epochs", epochs), ("--images", images), ("--batch", batch)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if not lr > 0:
        raise InputError(f"--lr must be positive, got {lr}")
    out, source = Path(out_dir), Path(checkpoint)
    check_replaceable(out, source, "qat", "an output of launch/qat.py")
    model, cfg = load_export(source)
    refuse_conditioned(model, source)
    train, record = read_calibration_images(image_shards(cfg, shards, source, "--shards"), images, cfg.data.image_size)
    torch.manual_seed(seed)
    started = time.perf_counter()
    losses = _finetune(model, train, epochs, lr, batch, cfg.loss.kd_mode, np.random.default_rng(seed))
    info = read_info(source)
    info.update(image_threshold=None, image_threshold_source="none: fine-tuned for INT8; evaluate this export",
                qat={"from": str(source), "epochs": epochs, "lr": lr, "batch": batch, "seed": seed,
                     "images": record, "simulated_int8_loss": losses,
                     "seconds": round(time.perf_counter() - started, 1)})
    write_export(model, cfg, out.parent, out.name, info)  # swapped in whole; refused if the weights diverged
    return info


def _finetune(model: torch.nn.Module, train: np.ndarray, epochs: int, lr: float, batch: int, kd_mode: str,
              rng: np.random.Generator) -> list[float]:
    """Train the student through the INT8 simulation; the simulated loss before training and after each epoch."""
    graph = InferenceGraph(model, "uint8")  # eval mode throughout: BatchNorm statistics stay the trained ones
    student = [p for name, p in model.named_parameters() if not name.startswith("teacher.") and p.requires_grad]
    optimizer = torch.optim.Adam(student, lr=lr, betas=(0.5, 0.999))  # RD4AD's betas
    sim = Int8Simulation(model)
    ranges = torch.from_numpy(train[:RANGE_IMAGES])

    def features(images: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return graph.features(graph.normalized(torch.from_numpy(images)))  # the teacher's are frozen: no graph

    def simulated_loss() -> float:
        with torch.no_grad():
            return float(np.mean([kd_loss(*features(train[i:i + batch]), kd_mode).item()
                                  for i in range(0, len(train), batch)]))

    try:
        sim.calibrate(lambda: graph(ranges))
        losses = [simulated_loss()]
        steps = max(len(train) // batch, 1)
        for epoch in range(epochs):
            order = rng.permutation(len(train))
            for step in tqdm(range(steps), desc=f"qat epoch {epoch}", leave=False):
                loss = kd_loss(*features(train[order[step * batch:(step + 1) * batch]]), kd_mode)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            sim.calibrate(lambda: graph(ranges))
            losses.append(simulated_loss())
    finally:
        sim.remove()
    return [round(v, 6) for v in losses]


