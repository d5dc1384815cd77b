"""What an RD + CCL training step costs: the models compared, a clock for the parts of a step, conv MACs.

Shared by bench/step.py (CPU) and bench/gpu.py (CUDA). Not a benchmark on its own; the interleaved
timing itself is bench/timing.py's.

- ``SETTINGS``: today's small setting and the paper's (wide_resnet50_2, 256 px, batch 16 = 8 classes x 2).
- ``build_models``: Joint RD (no projector, lambdas 0) and RD + CCL with one shared teacher state.
- ``LADDER``: RD + CCL with its terms switched on one by one (the lambdas of one model object), so the
  backward and optimizer cost of each addition shows as a difference of whole steps.
- ``StepClock``: wall time of the parts of a training step (teacher, projector, neck per view, decoder,
  KD, local CL per scale, global CL, rest of the forward, backward, optimizer) from forward hooks and
  wrappers of the loss functions where ``ccl.models.rdccl`` calls them.
- ``conv_macs``: multiply-accumulates of every conv of a step, forward and backward (grad of the weight
  when trainable, grad of the input when it requires one): the floor the step-time ratio cannot beat.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

import ccl.models.rdccl as rdccl
from bench.timing import interleaved_parts
from ccl.models import RDCCL

SETTINGS = {
    "small": dict(teacher="resnet18", size=128, batch=8),
    "paper": dict(teacher="wide_resnet50_2", size=256, batch=16),
}

# (name, lambda_local, lambda_global) of the RD + CCL model; the projector runs in every row.
LADDER = (("RD + projector, no CL", 0.0, 0.0), ("+ global CL only", 0.0, 1.0),
          ("+ local CL only", 1.0, 0.0), ("RD+CCL", 1.0, 1.0))


def build_models(teacher: str, device: str | torch.device = "cpu", **ccl_kw) -> dict[str, RDCCL]:
    """Joint RD and RD + CCL (``ccl_kw`` overrides its switches); both hold the same teacher weights."""
    torch.manual_seed(0)
    rd = RDCCL(teacher=teacher, projector="none", lambda_local=0.0, lambda_global=0.0)
    torch.manual_seed(0)
    ccl_model = RDCCL(teacher=teacher, **ccl_kw)
    ccl_model.teacher.load_state_dict(rd.teacher.state_dict())
    return {"RD": rd.to(device), "RD+CCL": ccl_model.to(device)}


def make_batch(batch: int, size: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """Images, a slightly different augmented view, and labels of batch // 2 classes x 2 (the paper's 8 x 2)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    aug = x + 0.1 * torch.randn(x.shape, generator=g)
    labels = torch.arange(batch) % max(1, batch // 2)
    return x.to(device), aug.to(device), labels.to(device)


@contextmanager
def lambdas(model: RDCCL, local: float, global_: float) -> Iterator[RDCCL]:
    """The model with these lambdas for the block (a ladder row), restored afterwards."""
    saved = model.lambda_local, model.lambda_global
    model.lambda_local, model.lambda_global = local, global_
    try:
        yield model
    finally:
        model.lambda_local, model.lambda_global = saved


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def clock_for(device: torch.device | str) -> Callable[[], float]:
    """Seconds to time with: wall time on a GPU; on CPU the process's CPU time, which time slices given
    to other jobs of a shared machine do not inflate (with one intra-op thread it is the work done)."""
    return time.perf_counter if torch.device(device).type == "cuda" else time.process_time


class StepClock:
    """Wall time of the parts of RDCCL training steps (``train_step``).

    Forward hooks time the teacher, projector, neck (first call of a step: the anchor view; second:
    the augmented view) and decoder; ``kd_loss``, the local loss (one call per configured
    scale) and the global loss are wrapped where ``ccl.models.rdccl`` looks them up. ``sync`` is called
    at every boundary (CUDA: torch.cuda.synchronize), which a real step would not do.
    """

    def __init__(self, model: RDCCL, sync: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.process_time) -> None:
        self.model, self.sync, self.clock = model, sync, clock
        self.parts: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)
        self._started: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def reset(self) -> None:
        self.parts.clear()
        self._calls.clear()

    def _label(self, kind: str) -> str:
        n = self._calls[kind]
        self._calls[kind] += 1
        if kind == "neck":
            return "neck, anchor view" if n == 0 else "neck, augmented view"
        if kind == "local":
            return f"local CL, scale {self.model.local_scales[n]}"
        return kind

    def _hook(self, kind: str, module: nn.Module) -> None:
        def before(mod, inp):
            self.sync()
            self._started[kind] = self.clock()

        def after(mod, inp, out):
            self.sync()
            self.parts[self._label(kind)] += self.clock() - self._started.pop(kind)

        handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        self._undo.append(lambda: [h.remove() for h in handles])

    def _wrap(self, kind: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            label = self._label(kind)
            self.sync()
            t0 = self.clock()
            out = fn(*args, **kwargs)
            self.sync()
            self.parts[label] += self.clock() - t0
            return out
        return wrapper

    def __enter__(self) -> StepClock:
        for kind in ("teacher", "projector", "neck", "decoder"):
            self._hook(kind, getattr(self.model, kind))
        # rdccl calls local_contrastive_views (older code: local_contrastive_loss), once per scale.
        local = "local_contrastive_views" if hasattr(rdccl, "local_contrastive_views") else "local_contrastive_loss"
        for name, kind in (("kd_loss", "KD loss"), (local, "local")):
            original = getattr(rdccl, name)
            setattr(rdccl, name, self._wrap(kind, original))
            self._undo.append(lambda name=name, original=original: setattr(rdccl, name, original))
        key = self.model.global_loss
        original = rdccl.global_losses[key]
        rdccl.global_losses[key] = self._wrap("global CL", original)
        self._undo.append(lambda: rdccl.global_losses.__setitem__(key, original))
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def train_step(self, step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Time one step: ``step()`` returns the loss (forward); then backward and the optimizer.

        The hooks and wrappers are in place during the forward only (one clock at a time)."""
        self.reset()
        self.sync()
        t0 = self.clock()
        with self:
            loss = step()
        self.sync()
        t1 = self.clock()
        loss.backward()
        self.sync()
        t2 = self.clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.sync()
        t3 = self.clock()
        parts = dict(self.parts)
        parts["rest of the forward"] = (t1 - t0) - sum(parts.values())
        parts.update({"backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0})
        return parts


def conv_macs(model: nn.Module, run: Callable[[], torch.Tensor | dict]) -> dict[str, float]:
    """Conv multiply-accumulates of ``run()`` (a forward of ``model``) by top-level part, and
    ``"backward"``: the MACs the backward pass adds (weight grads of trainable convs, input grads
    where the input requires one). Elementwise work and the losses' matmuls are not counted."""
    macs: dict[str, float] = defaultdict(float)

    def hook(name):
        def count(mod, inp, out):
            kernel = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
            # Conv2d: each output sums in/groups x k x k inputs; ConvTranspose2d: each input spreads
            # over out/groups x k x k outputs.
            n = float((out if isinstance(mod, nn.Conv2d) else inp[0]).numel() * kernel)
            macs[name.split(".")[0]] += n
            macs["backward"] += n * (int(mod.weight.requires_grad) + int(inp[0].requires_grad))
        return count

    handles = [mod.register_forward_hook(hook(n)) for n, mod in model.named_modules()
               if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    macs["forward"] = sum(v for k, v in macs.items() if k != "backward")
    macs["step"] = macs["forward"] + macs["backward"]
    return dict(macs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step_times(models: dict[str, RDCCL], batch: tuple[torch.Tensor, ...], repeats: int, warmup: int,
                     sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.process_time,
                     context: Callable[[], AbstractContextManager] = nullcontext,
                     extra: dict[str, Callable[[], dict[str, float]]] | None = None) -> dict[str, dict[str, float]]:
    """Parts of a training step (StepClock) of Joint RD and of every LADDER row of the RD + CCL model, the
    candidates interleaved (plus ``extra`` candidates); ``context`` wraps each forward (e.g. autocast)."""
    x, aug, labels = batch
    opts = {k: torch.optim.Adam(m.param_groups(1e-3, 5e-3), betas=(0.5, 0.999)) for k, m in models.items()}
    clocks = {k: StepClock(m.train(), sync, clock) for k, m in models.items()}

    def forward(model: RDCCL) -> torch.Tensor:
        with context():
            return model(x, aug, labels)["loss"]

    fns = {"Joint RD": lambda: clocks["RD"].train_step(lambda: forward(models["RD"]), opts["RD"])}
    for name, local, global_ in LADDER:
        def step(local=local, global_=global_) -> dict[str, float]:
            with lambdas(models["RD+CCL"], local, global_):
                return clocks["RD+CCL"].train_step(lambda: forward(models["RD+CCL"]), opts["RD+CCL"])
        fns[name] = step
    return interleaved_parts({**fns, **(extra or {})}, repeats, warmup)


def mac_floor(models: dict[str, RDCCL], size: int, device: str | torch.device = "cpu") -> dict[str, float]:
    """Conv MACs of one training step of Joint RD and each LADDER row (batch of 2, one class: MACs are
    linear in the batch)."""
    x, aug, labels = make_batch(2, size, device)
    out = {"Joint RD": conv_macs(models["RD"], lambda: models["RD"](x, aug, labels))["step"]}
    for name, local, global_ in LADDER:
        with lambdas(models["RD+CCL"], local, global_):
            out[name] = conv_macs(models["RD+CCL"], lambda: models["RD+CCL"](x, aug, labels))["step"]
    return out


def row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


def parts_table(rd: dict[str, float], ccl_times: dict[str, float]) -> list[str]:
    """Markdown rows: every part of the RD + CCL step beside Joint RD's, the extra, its share."""
    extra = ccl_times["total"] - rd["total"]
    lines = [row(["part of the step (ms)", "Joint RD", "RD+CCL", "extra", "share of the extra"]),
             row(["---"] + ["---:"] * 4)]
    for part in [p for p in ccl_times if p != "total"] + ["total"]:
        a, b = rd.get(part, 0.0), ccl_times[part]
        share = f"{(b - a) / extra:.0%}" if extra > 0 and part != "total" else ""
        lines.append(row([part, ms(a) if part in rd else "-", ms(b), f"{(b - a) * 1e3:+.0f}", share]))
    return lines


def ladder_table(times: dict[str, dict[str, float]], macs: dict[str, float] | None = None) -> list[str]:
    """Markdown rows: forward / backward / optimizer / step of Joint RD and each LADDER row, ratios to
    Joint RD, and the conv-MAC ratio (when ``macs`` is given)."""
    base = times["Joint RD"]["total"]
    head = ["variant (ms)", "forward", "backward", "optimizer", "step", "x Joint RD"]
    lines = [row(head + (["conv MACs x Joint RD"] if macs else [])),
             row(["---"] + ["---:"] * (len(head) - (0 if macs else 1)))]
    for name in ["Joint RD"] + [r[0] for r in LADDER]:
        t = times[name]
        fwd = t["total"] - t["backward"] - t["optimizer"]
        goal = " (goal <= 1.8x)" if name == "RD+CCL" else ""
        cells = [name, ms(fwd), ms(t["backward"]), ms(t["optimizer"]), ms(t["total"]),
                 f"{t['total'] / base:.2f}x{goal}"]
        lines.append(row(cells + ([f"{macs[name] / macs['Joint RD']:.2f}x"] if macs else [])))
    return lines
