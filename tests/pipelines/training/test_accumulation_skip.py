"""A non-finite loss skips its whole accumulation window, with DDP and with DeepSpeed ZeRO-2 (issue 10 item 12).

``pipelines.training.train.train_step`` runs on two forked gloo ranks with train.grad_accum=2 over six
micro-batches (three windows) of a tiny model; rank 0's loss of micro-batch 2 or 3 is made NaN.
Skipping the whole second window must give the same parameters and two optimizer steps whichever
of its micro-batches was bad. Skipping only the bad micro-batch did not (measured with the old
train_step): with micro-batch 2 bad, DDP and DeepSpeed stepped on the half window that was left
(three steps); with micro-batch 3 bad, DeepSpeed carried the window's first half into the next
update (other parameters).

As in test_train_exit.py the ranks are forked from a parent that imported torch, accelerate and
deepspeed once; each variant prints "result ENGINE POISONED STEPS CHECKSUM".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.experiments.jobs import free_port

ROOT = Path(__file__).resolve().parents[3]
POISONED = ("2", "3")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
def test_a_non_finite_loss_skips_its_whole_window(engine: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    proc = subprocess.run([sys.executable, __file__, engine], capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = {r[2]: (int(r[3]), r[4]) for r in (line.split() for line in proc.stdout.splitlines())
           if r[:2] == ["result", engine]}
    assert sorted(got) == sorted(POISONED), proc.stdout
    assert got["2"] == got["3"] and got["2"][0] == 2, got  # 3 windows, the whole second one skipped, nothing else


# ---------------------------------------------------------------- the forked ranks


class Tiny:
    """Builds a module with the trainer's interface: (images, augmented, labels, rank, world_size) -> losses."""

    @staticmethod
    def make():
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3)
                self.head = torch.nn.Linear(4, 2)

            def forward(self, images, augmented, labels, rank=0, world_size=1, **switches):
                f = self.head(self.conv(images).mean(dim=(2, 3)))
                loss = ((f - self.head(self.conv(augmented).mean(dim=(2, 3)))) ** 2).mean() + f.pow(2).mean()
                if bool((labels < 0).any()):  # the poisoned micro-batch of this rank
                    loss = loss * float("nan")
                zero = loss.detach() * 0
                return {"loss": loss, "kd": loss.detach(), "lcl": zero, "gcl": zero, "wcl": zero}

        torch.manual_seed(0)
        return Module()


def _rank(engine: str, rank: int, poisoned: set[int], out_w: int) -> None:
    import torch

    from pipelines.base.config import load_config
    from pipelines.base.distributed import configure_deepspeed, make_accelerator, param_checksum
    from pipelines.training.checkpoint import TrainState
    from pipelines.training.optim import make_optimizer
    from pipelines.training.train import Run, train_step

    cfg = load_config(None, ["train.grad_accum=2", "data.batch_size=4", "train.lr_rest=0.05",
                             "train.lr_projector=0.05", "run.dir=/nonexistent"])
    acc = make_accelerator(cfg)
    model = Tiny.make()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.5, 0.999))
    configure_deepspeed(acc, cfg, 2)
    model, optimizer = acc.prepare(model, optimizer)
    run = Run(cfg, acc, model, optimizer, [0.05], None, None, None, None, TrainState(), 6, 3, torch.float32,
              SimpleNamespace(requested=False))
    for micro in range(6):
        g = torch.Generator().manual_seed(100 * micro + rank)
        images = torch.randint(0, 255, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
        label = torch.full((2,), -1 if (micro in poisoned and rank == 0) else 0)
        train_step(run, {"image": images, "augmented": images.flip(-1), "label": label, "keys": [],
                         "stats": {"corrupt": 0, "lost": 0}})
    if rank == 0:
        os.write(out_w, f"{run.state.step} {param_checksum(acc.unwrap_model(model))}".encode())
    del make_optimizer


def _variants(engine: str) -> None:
    for name in POISONED:
        poisoned = {int(name)}
        port = free_port()
        out_r, out_w = os.pipe()
        pids = []
        for rank in range(2):
            pid = os.fork()
            if pid == 0:
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                if engine == "ddp":
                    os.environ["ACCELERATE_USE_CPU"] = "1"
                else:  # what `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml` exports
                    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO3_INIT="false",
                                      ACCELERATE_DEEPSPEED_CONFIG_FILE=str(ROOT / "configs/deepspeed/zero2.json"))
                code = 0
                try:
                    _rank(engine, rank, poisoned, out_w)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    code = 1
                os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        os.close(out_w)
        result = os.read(out_r, 200).decode()
        assert codes == [0, 0], (name, codes)
        print(f"result {engine} {name} {result}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import accelerate  # noqa: F401  (imported once, before forking)
    import torch  # noqa: F401

    if sys.argv[1] == "deepspeed":
        import deepspeed  # noqa: F401
    import pipelines.training.train  # noqa: F401

    _variants(sys.argv[1])
