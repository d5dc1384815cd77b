"""The deployable graph of a trained RDCCL: image batch -> (anomaly map, image score).

One module, traced by every export format (ONNX, OpenVINO, TorchScript) and also run eagerly by
``predict.py`` on a torch export, so the deployed graph and the torch path are the same code:

    graph = InferenceGraph(model, "uint8")      # (B, H, W, 3) uint8 RGB, as read from files
    maps, scores = graph(batch)                 # (B, H, W) float32, (B,) float32

``input_kind`` "uint8" folds the ImageNet normalisation and the HWC -> CHW transpose into the
graph (the runtime needs no preprocessing beyond the resize); "float" takes the normalised
(B, 3, H, W) batch the torch evaluation feeds the model. The map is RDCCL's inference map
(per-scale 1 - cos, bilinear up-sampling, sum, Gaussian blur with the model's sigma), the score
its maximum; the loss terms and global features of the training forward are left out.

A class-conditioned student's graph is one class's (``class_id``, an index into ``model.condition.class_names``):
an inspection station sees one product, and the traced graph keeps taking images only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ccl.data.image_ops import IMAGENET_MEAN, IMAGENET_STD
from ccl.metrics.anomaly_map import anomaly_map, image_score

INPUT_KINDS = ("uint8", "float")


class InferenceGraph(nn.Module):
    """Teacher, projector, neck, decoder and the smoothed map of an RDCCL, in eval mode."""

    def __init__(self, model: nn.Module, input_kind: str = "uint8", class_id: int | None = None) -> None:
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        condition = getattr(model, "condition", None)
        if (condition is None) != (class_id is None):
            raise ValueError("a class-conditioned model's graph scores one class: give class_id" if class_id is None
                             else "class_id is for a class-conditioned model; this one has no class conditioning")
        if condition is not None and not 0 <= class_id < condition.num_classes:
            raise ValueError(f"class_id={class_id} is not one of the model's {condition.num_classes} classes")
        self.model = model.eval()
        self.input_kind = input_kind
        device = next(model.parameters()).device  # the constants live where the model does (a GPU for predict)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1), persistent=False)
        self.class_id = class_id
        self.eval()

    def train(self, mode: bool = True) -> InferenceGraph:
        return super().train(False)  # BatchNorm running statistics only: a deployed graph never trains

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """The model input: (B, H, W, 3) uint8 -> ImageNet-normalised (B, 3, H, W); a float batch as is."""
        if self.input_kind == "float":
            return images
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The teacher's and the student's maps of a normalised (B, 3, H, W) batch, scale by scale."""
        m = self.model
        teacher = m.teacher.body(x)  # the frozen encoder's maps (Teacher.forward minus its no_grad block)
        classes = None if self.class_id is None else torch.full((x.shape[0],), self.class_id, device=x.device)
        return teacher, m.decode(m.neck(m.projector(teacher)), classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalized(images)
        teacher, student = self.features(x)
        maps = anomaly_map(teacher, student, x.shape[-2:], sigma=self.model.sigma)
        return maps, image_score(maps)

    @torch.no_grad()
    def run_numpy(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph on a numpy batch (on the model's device): what an exported graph's runtime returns."""
        device = next(self.model.parameters()).device
        maps, scores = self(torch.from_numpy(np.ascontiguousarray(images)).to(device))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()
