"""The Accelerator, synchronised BatchNorm on CPU, and the two ways out (reductions: ``pipelines.base.collectives``).

DESIGN section 7: DeepSpeed on a CPU machine needs gloo via ``InitProcessGroupKwargs`` (and no
ACCELERATE_USE_CPU); gloo aborts at interpreter exit unless the prepared objects are freed first,
so a successful run ends through ``shutdown`` on every rank. A failing rank never enters a
collective (its peers may be blocked in one): it leaves at once through ``pipelines.base.exits``, and the
launcher ends the others. Collectives time out after ``train.collective_timeout`` seconds.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import signal
import sys
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from pipelines.base.config import Config, ConfigError
from pipelines.base.exits import world_from_env  # noqa: F401 (the launcher's rank and world size, re-exported)

# The autograd all-reduce is what synchronised BN needs (gradients flow back to every rank); torch 2.14
# marks it deprecated; the message would repeat at every BN layer of every step.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


def make_accelerator(cfg: Config) -> Any:
    """Accelerator for DDP or DeepSpeed, whichever ``accelerate launch`` configured."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    if world_from_env()[1] > 1:  # a backend for a single process would make Accelerate expect a group
        handlers.append(InitProcessGroupKwargs(timeout=collective_timeout(cfg),
                                               backend=None if torch.cuda.is_available() else "gloo"))
    return Accelerator(mixed_precision=cfg.train.precision, gradient_accumulation_steps=cfg.train.grad_accum,
                       kwargs_handlers=handlers, step_scheduler_with_optimizer=False)


def collective_timeout(cfg: Config) -> timedelta:
    """How long a collective waits for a peer (``train.collective_timeout``) before this rank fails."""
    seconds = cfg.train.collective_timeout
    if not seconds > 0:
        raise ConfigError(f"train.collective_timeout={seconds} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def configure_deepspeed(accelerator: Any, cfg: Config, local_batch: int) -> None:
    """Fill what Accelerate cannot infer: we never prepare the loader, and clipping follows train.grad_clip."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = local_batch
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["train_batch_size"] = local_batch * cfg.train.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = cfg.train.grad_clip  # DeepSpeed's default would be 1.0 (DESIGN section 7)
    if isinstance(ds.get("bf16"), dict):  # a skipped window relies on DeepSpeed dropping non-finite gradients
        ds["bf16"]["check_grad_overflow"] = True
    ds.setdefault("zero_allow_untested_optimizer", True)


def is_deepspeed(accelerator: Any) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def param_checksum(model: nn.Module) -> str:
    """Digest of the trainable parameters (bitwise): equal on every rank after each synchronised step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- synchronised BatchNorm


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over all ranks (torch's SyncBatchNorm is GPU-only).

    The per-channel sums go through an autograd all-reduce, so each rank's gradient includes the
    other ranks' use of its samples: with DDP's gradient average the result equals a single process
    on the concatenated batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        if x.dtype in (torch.float16, torch.bfloat16):  # autocast: statistics in float32, as torch's BN keeps them
            return self.forward(x.float()).to(x.dtype)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        stats = dist_nn.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine else y


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Trainable BatchNorm2d layers -> synchronised ones (torch's on GPU, ``CpuSyncBatchNorm`` on CPU)."""
    if torch.cuda.is_available():
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d and child.weight is not None and child.weight.requires_grad:
            new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child)
    return model


# ------------------------------------------------------- the two ways out (the error path: pipelines.base.exits)


def shutdown(accelerator: Any | None) -> None:
    """The end of a successful run, on every rank: free prepared objects before the interpreter exits.

    gloo aborts at exit otherwise (DESIGN section 7). The barrier is safe here because every rank
    reaches this point; an error path never comes here (``pipelines.base.exits``). Callers drop their own
    references (model, optimizer, loaders) first, e.g. by returning.
    """
    if accelerator is not None:
        accelerator.wait_for_everyone()
        accelerator.free_memory()  # drops its references to the prepared objects, then gc.collect()
        accelerator.end_training()
    else:
        gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def loader_worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a loader worker lives and dies with its rank.

    - Killed with it (Linux prctl PR_SET_PDEATHSIG): a forked worker holds copies of its rank's
      sockets, gloo's included, so a killed rank whose worker lives on (torch notices the orphaning
      only every 5 s) keeps its peers' collectives waiting, and the worker would be left behind.
    - Deaf to SIGTERM: the launcher signals a rank's whole process group; a worker dying of it would
      make torch raise in the rank and spoil the rank's graceful stop (checkpoint, status 0).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the rank died before prctl took effect
        os._exit(1)


def make_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of a dataset that yields whole batches (batch_size=None); its workers keep the
    DataLoader's round-robin order and live and die with the rank (``loader_worker_init``)."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=loader_worker_init)
