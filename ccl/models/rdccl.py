"""RDCCL: Reverse Distillation made multi-class by class-aware contrastive learning, in one module.

Frozen teacher -> projector phi_p -> OCBE neck -> reverse decoder. The decoder
reconstructs the detached, unprojected teacher features (KD loss); local CL
acts on the projected maps, global CL on the pooled neck code; both views of a
training sample go through teacher and projector (one concatenated batch) and the
neck (one batch per view; only the anchor view moves the neck's BatchNorm running
statistics, as only clean images are seen at inference); only the anchor view is decoded. With
``condition_classes`` the decoder is conditioned on the image's class (ccl.models.class_condition), and the
wrong-class margin (ccl.losses.wrong_class) asks it not to rebuild an image under another class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ccl.losses.global_variants import global_losses
from ccl.losses.kd import kd_loss
from ccl.losses.local import NEGATIVES, POSITIVES, local_contrastive_views
from ccl.losses.wrong_class import pixel_distance, wrong_class_loss
from ccl.metrics.anomaly_map import anomaly_map, image_score
from ccl.models.class_condition import ClassFiLM
from ccl.models.decoder import build_decoder
from ccl.models.neck import build_neck
from ccl.models.projector import build_projector
from ccl.models.teacher import build_teacher

TEACHER_PREFIX = "teacher."
MATCHES = ("projected", "teacher")  # what picks a local positive's position (Eq. 2-3)
KD_MODES = ("flat", "pixel")  # ccl.losses.kd: one cosine per sample (RD4AD) or per pixel
REDUCTIONS = ("mean", "sum")  # over the anchors of the contrastive terms (Eq. 4-5 sum; DESIGN takes the mean)
RD4AD_TEACHER_WEIGHTS = "wide_resnet50_2.tv_in1k"  # torchvision's weights, which RD4AD's encoder loads


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` keep normalising with batch statistics but do not update their
    running statistics (momentum 0) inside the block."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def pooled(code: torch.Tensor) -> torch.Tensor:
    """Global average pooling of the neck code (B, D, h, w) -> (B, D)."""
    return code.mean(dim=(2, 3))


def require_rd4ad_teacher(weights: str, where: str, teacher: str, pretrained: str) -> None:
    """ValueError unless ``weights`` (``Teacher.weights``) are those RD4AD's checkpoints were trained on."""
    if weights != RD4AD_TEACHER_WEIGHTS:
        raise ValueError(
            f"{where}: an RD4AD checkpoint needs the teacher it was trained with, torchvision's wide_resnet50_2 "
            f"ImageNet weights ({RD4AD_TEACHER_WEIGHTS}), but this teacher holds {weights!r} "
            f"(model.teacher={teacher!r}, model.pretrained={pretrained!r}). Use model.teacher={RD4AD_TEACHER_WEIGHTS} "
            f"model.pretrained=hub (configs/rd4ad.yaml), or model.pretrained=PATH of torchvision's "
            f"wide_resnet50_2-95faca4d.pth")


def setting_problems(local_window: int | str, local_scales: Sequence[int], scales: int, noise_prob: float,
                     noise_std: float) -> dict[str, str]:
    """What is wrong with these ``RDCCL`` settings, by parameter name (empty when nothing is): the one check of
    them, for the constructor and for a config checked before anything is built."""
    problems = {}
    w = int(local_window) if isinstance(local_window, str) and local_window.isdigit() else local_window
    if w != "full" and not (isinstance(w, int) and w >= 1 and w % 2 == 1):
        problems["local_window"] = "must be a positive odd integer or 'full'"
    if not local_scales or any(not 0 <= s < scales for s in local_scales):
        problems["local_scales"] = f"must index the {scales} teacher scales"
    if not 0.0 <= noise_prob <= 1.0:
        problems["noise_prob"] = "must be in [0, 1]"
    if noise_std < 0:
        problems["noise_std"] = "must be >= 0"
    return problems


class RDCCL(nn.Module):
    """Teacher + projector + neck + decoder; forward returns a dict of losses (and maps at inference)."""

    def __init__(
        self,
        teacher: str = "wide_resnet50_2",
        pretrained: str = "none",
        out_indices: Sequence[int] = (1, 2, 3),
        projector: str = "4-cblocks",
        projector_residual: bool = False,
        lambda_local: float = 1.0,
        lambda_global: float = 1.0,
        temperature: float = 0.1,
        local_window: int | str = 1,
        local_scales: Sequence[int] = (0, 1, 2),
        local_chunk: int = 4096,
        global_loss: str = "supcon",
        kd_mode: str = "flat",
        sigma: float = 4.0,
        local_positives: str = "class",
        local_negatives: str = "window",
        local_match: str = "projected",
        reduction: str = "mean",
        noise_prob: float = 0.0,
        noise_std: float = 1.0,
        condition_classes: Sequence[str] = (),
        condition_inner: bool = False,
        lambda_wrong_class: float = 0.0,
        wrong_class_margin: float = 0.2,
    ) -> None:
        super().__init__()
        self.teacher = build_teacher(teacher, pretrained, out_indices)
        channels, reductions = self.teacher.channels, self.teacher.reductions
        width_mult = 2 if "wide" in teacher else 1  # wide ResNets double the bottleneck width
        self.projector = build_projector(channels, projector, projector_residual)
        self.neck = build_neck(channels, reductions, width_mult)
        self.decoder = build_decoder(channels, reductions, self.neck.out_channels, width_mult, self.teacher.signed())
        # the student conditioned on the image's class (ccl.models.class_condition); None: one student for all
        # condition_inner: the decoder's inner maps are modulated too, not only its input
        inner = self.decoder.layer_channels()[:-1] if condition_inner else []
        self.condition = ClassFiLM(condition_classes, self.neck.out_channels, inner) if condition_classes else None
        if condition_inner and self.condition is None:
            raise ValueError("condition_inner needs condition_classes")
        if lambda_wrong_class and (self.condition is None or self.condition.num_classes < 2):
            raise ValueError("lambda_wrong_class > 0 needs a student conditioned on at least 2 classes "
                             "(condition_classes)")
        if lambda_wrong_class < 0 or wrong_class_margin < 0:
            raise ValueError(f"lambda_wrong_class={lambda_wrong_class} and wrong_class_margin={wrong_class_margin} "
                             "must be >= 0")
        self.lambda_wrong_class, self.wrong_class_margin = float(lambda_wrong_class), float(wrong_class_margin)
        # pipelines' config refuses these when it loads; a model built directly (tests, bench, notebooks) fails
        # here, at construction, rather than at its first training step
        for name, value, allowed in (("global_loss", global_loss, tuple(global_losses)), ("kd_mode", kd_mode, KD_MODES),
                                     ("local_positives", local_positives, POSITIVES),
                                     ("local_negatives", local_negatives, NEGATIVES),
                                     ("local_match", local_match, MATCHES), ("reduction", reduction, REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        given = {"local_window": local_window, "local_scales": tuple(local_scales), "noise_prob": noise_prob,
                 "noise_std": noise_std}
        for name, problem in setting_problems(local_window, local_scales, len(channels), noise_prob, noise_std).items():
            raise ValueError(f"{name}={given[name]!r} {problem}")
        self.local_positives, self.local_negatives, self.local_match = local_positives, local_negatives, local_match
        self.reduction, self.noise_prob, self.noise_std = reduction, float(noise_prob), float(noise_std)
        self.lambda_local, self.lambda_global = float(lambda_local), float(lambda_global)
        self.temperature, self.local_window = float(temperature), local_window
        self.local_scales, self.local_chunk = tuple(local_scales), int(local_chunk)
        self.global_loss, self.kd_mode, self.sigma = global_loss, kd_mode, float(sigma)

    @property
    def channels(self) -> list[int]:
        """The teacher's channels per scale."""
        return self.teacher.channels

    def forward(
        self,
        images: torch.Tensor,
        augmented: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        contrastive_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Training with `augmented` (B, 3, H, W) and `labels` (B,); otherwise inference with anomaly maps.

        ``labels`` are class indices; a class-conditioned student needs them at inference too.
        ``contrastive_weight`` scales lambda1 and lambda2 for this step (the trainer's warm-up).
        """
        if augmented is None:
            return self._infer(images, labels)
        return self._train_losses(images, augmented, labels, rank, world_size, contrastive_weight)

    def _train_losses(
        self, images: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor | None, rank: int, world_size: int,
        contrastive_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        use_local, use_global = self.lambda_local != 0, self.lambda_global != 0
        two_views = use_local or use_global
        if two_views and labels is None:
            raise ValueError("training with contrastive terms needs labels (B,)")
        self._check_classes(labels)
        b = images.shape[0]
        teacher = self.teacher(torch.cat([images, augmented]) if two_views else images)  # [(nB, c, h, w)]
        projected = self.projector(teacher)
        # One split per scale (its backward is one concatenation; two slices would each fill a zero
        # tensor of both views' size); the local loss takes both views whole.
        views = [p.split(b) for p in projected]  # [(anchor (B, c, h, w), augmented or nothing)]
        neck_input = self._noisy([v[0] for v in views])
        if neck_input is None:
            code = self.neck([v[0] for v in views])  # (B, D, h, w)
        else:  # noisy features must not enter the running statistics that clean inference uses
            with running_stats_frozen(self.neck):
                code = self.neck(neck_input)
        anchor = [t[:b] for t in teacher]
        student = self.decode(code, labels)
        kd = kd_loss(anchor, student, self.kd_mode)
        zero = kd.new_zeros(())
        wcl = self._wrong_class(anchor, student, code, labels) if self.lambda_wrong_class else zero
        # Eq. 4-5 sum over the batch; "sum" scales the per-rank means by the global anchor count (2B per
        # rank x world size: DDP then averages the ranks' gradients into the single-process sum).
        scale = 2 * b * world_size if self.reduction == "sum" else 1
        lcl = scale * self._local(projected, teacher, labels, rank, world_size) if use_local else zero
        gcl = zero
        if use_global:
            # The augmented view is normalised with its own batch statistics but leaves the running
            # statistics alone: inference sees clean images, as the anchor view is.
            with running_stats_frozen(self.neck):
                code_aug = self.neck([v[1] for v in views])
            gcl = scale * global_losses[self.global_loss](
                pooled(code), pooled(code_aug), labels, self.temperature, rank, world_size
            )
        w = float(contrastive_weight)
        loss = kd + w * self.lambda_local * lcl + w * self.lambda_global * gcl + self.lambda_wrong_class * wcl
        features = F.normalize(pooled(code), dim=1).detach()
        return {"loss": loss, "kd": kd, "lcl": lcl, "gcl": gcl, "wcl": wcl, "global_features": features}

    def decode(self, code: torch.Tensor, classes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The decoder's maps of a neck code (B, D, h, w), under the images' classes (B,) when conditioned."""
        if self.condition is None:
            return self.decoder(code)
        return self.decoder(self.condition(code, classes), self.condition.inner(classes))

    def _check_classes(self, classes: torch.Tensor | None) -> None:
        if self.condition is not None and classes is None:
            raise ValueError(f"this student is conditioned on the class of every image ({self.condition.num_classes} "
                             "classes): give the images' class indices (labels)")

    def _wrong_class(self, anchor: list[torch.Tensor], student: list[torch.Tensor], code: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """ccl.losses.wrong_class: the code decoded under another class must not rebuild the teacher's maps.
        Not a view inference ever sees, so the decoder's running statistics stay as the right decode left them."""
        with running_stats_frozen(self.decoder):
            wrong = self.decode(code, self.condition.other_classes(labels))
        return wrong_class_loss(pixel_distance(anchor, student), pixel_distance(anchor, wrong), self.wrong_class_margin)

    def _noisy(self, feats: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Training only, with probability noise_prob per step: Gaussian noise (std noise_std) on a random half
        of the positions of each scale of the neck's input (the official CCL code's RD++-style perturbation:
        the student must rebuild the clean teacher features from corrupted ones). None: no noise this step."""
        if not self.training or self.noise_prob <= 0 or float(torch.rand(())) >= self.noise_prob:
            return None
        out = []
        for f in feats:
            mask = torch.randint(0, 2, (f.shape[0], 1, *f.shape[2:]), device=f.device, dtype=f.dtype)
            out.append(f + self.noise_std * torch.randn_like(f) * mask)
        return out

    def _local(
        self, projected: list[torch.Tensor], teacher: list[torch.Tensor], labels: torch.Tensor, rank: int,
        world_size: int,
    ) -> torch.Tensor:
        """Mean of the local CL over the configured scales; both views of a scale are one (2B, ...) batch."""
        losses = []
        for s in self.local_scales:
            match = teacher[s] if self.local_match == "teacher" else None
            losses.append(local_contrastive_views(
                projected[s], labels, self.temperature, self.local_window,
                rank, world_size, self.local_chunk, self.local_positives, self.local_negatives, match,
            ))
        return torch.stack(losses).mean()

    def _infer(self, images: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._check_classes(classes)
        teacher = self.teacher(images)
        code = self.neck(self.projector(teacher))
        student = self.decode(code, classes)
        kd = kd_loss(teacher, student, self.kd_mode)
        maps = anomaly_map(teacher, student, images.shape[-2:], sigma=self.sigma)  # (B, H, W)
        features = F.normalize(pooled(code), dim=1).detach()
        return {"kd": kd, "loss": kd, "anomaly_map": maps, "score": image_score(maps), "global_features": features}

    def compile_student(self, backend: str | Callable = "inductor", mode: str = "default") -> None:
        """torch.compile the trainable path (projector, neck, decoder) in place.

        Parameter names, state dict and hooks stay the eager modules' (exports and checkpoints do not
        change); the frozen teacher, the losses and their collectives run eagerly between the compiled parts.
        """
        for module in (self.projector, self.neck, self.decoder):
            module.compile(backend=backend, mode=None if mode == "default" else mode)

    def param_groups(self, lr_projector: float, lr_rest: float) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters (projector / neck + decoder); empty groups omitted."""
        groups = [
            {"name": "projector", "params": [p for p in self.projector.parameters() if p.requires_grad],
             "lr": lr_projector},
            {
                "name": "rest",
                "params": [p for m in (self.neck, self.condition, self.decoder) if m is not None
                           for p in m.parameters() if p.requires_grad],
                "lr": lr_rest,
            },
        ]
        return [g for g in groups if g["params"]]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of everything but the frozen teacher (projector, neck, decoder incl. BN statistics)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(TEACHER_PREFIX)}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load what trainable_state_dict() saved; the teacher is left untouched.

        Every tensor must have the model's shape and dtype (load_state_dict would cast an fp16 or int8
        tensor silently and change the scores) and hold finite values; with ``strict`` the keys must be the
        model's too. A ValueError names the first tensor that does not fit."""
        teacher_keys = [k for k in state_dict if k.startswith(TEACHER_PREFIX)]
        if teacher_keys:
            raise ValueError(f"trainable state must not hold teacher tensors, got {teacher_keys[:3]}")
        check_state(self.trainable_state_dict(), state_dict, strict)
        result = self.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(TEACHER_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"trainable state mismatch: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")

    def load_rd4ad_checkpoint(self, path_or_dict: str | Path | dict) -> None:
        """Load an official RD4AD checkpoint {"bn": neck state, "decoder": decoder state} (strict).

        As RD4AD's test script does, ``bn`` keys containing "memory" are dropped first. The checkpoint
        is refused unless the teacher holds the weights RD4AD was trained on (torchvision's,
        ``wide_resnet50_2.tv_in1k``): on other weights it would load without error and give other maps.
        RD4AD has no projector: use projector="none" for the original RD4AD model.
        """
        where = "checkpoint" if isinstance(path_or_dict, dict) else str(path_or_dict)
        require_rd4ad_teacher(self.teacher.weights, where, self.teacher.architecture, self.teacher.pretrained)
        ckpt = path_or_dict
        if not isinstance(ckpt, dict):
            ckpt = torch.load(Path(path_or_dict), map_location="cpu", weights_only=True)
        missing = [k for k in ("bn", "decoder") if k not in ckpt]
        if missing:
            raise KeyError(f"{where}: not an RD4AD checkpoint, lacks {missing} (has {sorted(ckpt)[:5]})")
        neck = {k: v for k, v in ckpt["bn"].items() if "memory" not in k}
        self.neck.load_state_dict(neck, strict=True)
        self.decoder.load_state_dict(ckpt["decoder"], strict=True)


def check_state(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], strict: bool = True) -> None:
    """``given`` fits ``own`` tensor by tensor (shape, dtype, finite values; with ``strict`` the same keys):
    ValueError naming the first tensor that does not, and how many others do not either."""
    problems = []
    if strict:
        problems += [f"tensor {k!r} is missing" for k in sorted(set(own) - set(given))]
        problems += [f"tensor {k!r} is not part of the model (an extra key)" for k in sorted(set(given) - set(own))]
    for key in sorted(set(own) & set(given)):
        want, got = own[key], given[key]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"tensor {key!r} has shape {list(got.shape)}, the model's is {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"tensor {key!r} is {str(got.dtype).removeprefix('torch.')}, the model's is "
                            f"{str(want.dtype).removeprefix('torch.')} (not cast: the scores would change)")
        elif got.is_floating_point() and not bool(torch.isfinite(got).all()):
            problems.append(f"tensor {key!r} holds non-finite values (NaN or inf): a diverged training?")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
