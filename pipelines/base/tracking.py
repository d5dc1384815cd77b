"""Run monitoring on the main process: W&B (online | offline | disabled) plus a plain JSON-lines log.

    tracker = Tracker(cfg, run_dir, accelerator.is_main_process)
    tracker.log({"train/loss": 0.3}, step)            # W&B and RUN/log.jsonl
    tracker.log_images("val/heatmaps", [(img, "caption")], step)   # W&B and RUN/images/*.png
    tracker.finish()

Other ranks get a tracker that does nothing. With ``tracking.wandb.mode=disabled`` W&B is never
imported and writes nothing; the JSON-lines log and the PNGs are always written. The W&B run id is
kept in ``RUN/wandb_id.txt`` so that ``--resume`` continues the same W&B run.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base.config import Config, to_dict


class Tracker:
    def __init__(self, cfg: Config, run_dir: str | Path, is_main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.wandb: Any = None
        mode = cfg.tracking.wandb.mode  # one of config.WandbMode, checked when the config loaded
        if not is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir / "log.jsonl", "a")
        if mode != "disabled":
            self.wandb = self._init_wandb(cfg, mode)

    @property
    def enabled(self) -> bool:
        """True on the main process (where logging happens)."""
        return self.is_main

    def _init_wandb(self, cfg: Config, mode: str) -> Any:
        import wandb

        w = cfg.tracking.wandb
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=w.project, entity=w.entity or None, name=w.name or cfg.run.name or self.run_dir.name,
                          tags=list(w.tags), config=to_dict(cfg), dir=str(self.run_dir), mode=mode, id=run_id,
                          resume="allow")

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not self.is_main:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": step, "time": round(time.time(), 3),
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_images(self, name: str, images: Sequence[tuple[np.ndarray, str]], step: int) -> None:
        if not self.is_main or not images:
            return
        import cv2

        out = self.run_dir / "images"
        out.mkdir(exist_ok=True)
        for i, (image, _) in enumerate(images):
            path = out / f"{name.replace('/', '_')}_{step:07d}_{i:02d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: [wandb.Image(im, caption=cap) for im, cap in images]}, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if not self.is_main:
            return
        self._log.write(json.dumps({"step": step, "table": name, "columns": columns, "rows": rows}, default=str) + "\n")
        self._log.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Close the log and the W&B run (marked failed when ``exit_code`` is not 0)."""
        if not self.is_main:
            return
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None
        if not self._log.closed:
            self._log.close()
