"""One train-then-evaluate job through the real CLIs, as the demo and the comparisons run it.

    job = Job(run_dir, config, overrides, builds)
    metrics = run_job(job, processes=2, port=None, env=job_env(2))   # {"per_group", "mean", ...}

Every step is a real ``accelerate launch`` call, so a job exercises what users run. A finished job
(``RUN/eval/metrics.json`` present) is not run again; a trained one is only evaluated.
``launcher``, ``job_env`` and ``free_port`` are also how the tests and benchmarks start several ranks.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Job:
    run_dir: Path
    config: Path
    overrides: tuple[str, ...]  # training overrides (run.dir and data.shards are added here)
    builds: tuple[Path, ...]  # shard builds: trained on together, evaluated together
    vis: int = 4  # heatmaps per group in the evaluation
    weights: str = "export"  # which export to evaluate: export (best validation) | export_last

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / ("eval" if self.weights == "export" else f"eval_{self.weights}")

    @property
    def metrics_path(self) -> Path:
        return self.eval_dir / "metrics.json"


def free_port() -> int:
    """A TCP port of this machine that is free now: the rendezvous of ranks started on one machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(processes: int, port: int | None = None, config_file: str | None = None) -> list[str]:
    """``accelerate launch`` that really starts ``processes`` ranks (on CPU: gloo, DESIGN.md section 7); the
    script and its arguments follow. ``port`` None: a free one. ``config_file``: an accelerate config (e.g.
    DeepSpeed's) decides the rest, instead of plain DDP with no mixed precision."""
    script = Path(sys.executable).with_name("accelerate")  # the venv's; else the module of this interpreter
    accelerate = [str(script), "launch"] if script.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    port = free_port() if port is None else port
    if config_file is not None:
        return [*accelerate, "--config_file", config_file, "--num_processes", str(processes),
                "--main_process_port", str(port)]
    common = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes <= 1:
        return [*accelerate, "--num_processes", "1", *common]
    return [*accelerate, "--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(port), *common]


def job_env(processes: int, threads: int = 1) -> dict[str, str]:
    """Environment of the launched ranks: offline, the repo importable, ``threads`` BLAS threads per rank."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    if processes > 1 and not _has_gpu():
        env["ACCELERATE_USE_CPU"] = "1"  # CPU ranks with gloo; see DESIGN.md section 7
    return env


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def run(cmd: Sequence[str], env: Mapping[str, str], log: Path | None = None) -> None:
    """Run a step (output to the console, or appended to ``log``); a failing step raises SystemExit."""
    started = time.time()
    if log is None:
        print("$ " + shlex.join(cmd), flush=True)
        result = subprocess.run(list(cmd), env=dict(env), cwd=REPO)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            result = subprocess.run(list(cmd), env=dict(env), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        where = f" (log: {log})" if log is not None else ""
        raise SystemExit(f"step failed (exit {result.returncode}){where}: {shlex.join(cmd)}")
    if log is None:
        print(f"  ({time.time() - started:.0f} s)", flush=True)


def train_job(job: Job, processes: int, port: int | None, env: Mapping[str, str], log: Path | None = None) -> None:
    """Train one job unless its export exists (a finished training is not run again); an interrupted one
    continues from its checkpoint (``--resume auto``)."""
    if not (job.run_dir / job.weights / "model.safetensors").is_file():
        run([*launcher(processes, port), "launch/train.py", "--config", str(job.config), *job_overrides(job),
             "--resume", "auto"], env, log)


def evaluate_job(job: Job, processes: int, port: int | None, env: Mapping[str, str],
                 log: Path | None = None) -> dict[str, Any]:
    """Evaluate one job's export unless it was scored already; returns its metrics.json."""
    if not job.metrics_path.is_file():
        eval_overrides = [o for o in job_overrides(job) if o.startswith("eval.")]
        shard_args = [arg for b in job.builds for arg in ("--shards", str(b))]
        run([*launcher(processes, port), "launch/evaluate.py", "--checkpoint", str(job.run_dir / job.weights),
             *shard_args, "--out", str(job.eval_dir), "--vis", str(job.vis), *eval_overrides], env, log)
    return json.loads(job.metrics_path.read_text())


def run_job(job: Job, processes: int, port: int | None, env: Mapping[str, str],
            log: Path | None = None) -> dict[str, Any]:
    """Train (unless exported) and evaluate (unless scored) one job; returns its metrics.json."""
    if not job.metrics_path.is_file():
        train_job(job, processes, port, env, log)
    return evaluate_job(job, processes, port, env, log)


def job_overrides(job: Job) -> list[str]:
    shards = ",".join(str(b) for b in job.builds)
    return [f"run.dir={job.run_dir}", f"data.shards=[{shards}]", *job.overrides]
