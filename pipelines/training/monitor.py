"""What the trainer shows: the scalars of the training loop, class separation of the global features, heatmaps.

- ``Meter`` / ``log_train``: running sums between two logs, over ranks summed (data counts) or averaged (the
  rest), logged on the main process (losses, data statistics, throughput, learning rates); ``progress`` is the
  epoch's bar, ``write_debug`` the per-rank parameter digests that tests compare.
- ``class_separation``: V-measure of K-means clusters (K = number of classes) against the classes.
- ``tsne_image``: the paper's Fig. 1b, a t-SNE scatter of the global features coloured by class.
- ``heatmaps``: anomaly-map overlays of a fixed set of validation images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipelines.base.collectives import sum_over_ranks, world_of
from pipelines.base.distributed import param_checksum
from pipelines.base.visualize import overlay
from pipelines.data.train_data import BATCH_COUNTS
from pipelines.training.run import Run

LOSS_TERMS = ("loss", "kd", "lcl", "gcl", "wcl")  # the scalar losses of a training step, logged and debugged


def class_separation(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """V-measure in [0, 1] of K-means clusters against the class labels (1 = classes perfectly apart)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    k = len(np.unique(labels))
    if k < 2 or len(features) <= k:
        return float("nan")
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features)
    return float(v_measure_score(labels, clusters))


def tsne_image(features: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 rendering of a 2-D t-SNE of ``features`` coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    perplexity = float(max(2, min(30, (len(features) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(features)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(np.unique(labels)):
        sel = labels == c
        name = names[c] if 0 <= c < len(names) else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(i % 20), label=name)
    if len(np.unique(labels)) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best")
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


@torch.no_grad()
def heatmaps(module: Any, images: torch.Tensor, keys: Sequence[str], classes: torch.Tensor,
             to_input: Any) -> list[tuple[np.ndarray, str]]:
    """Overlays of ``images`` (B, 3, S, S) uint8 with the model's anomaly maps (each image under its class (B,)
    for a conditioned student), captioned with key and score."""
    was_training = module.training
    module.eval()
    out = module(to_input(images), labels=classes.to(next(module.parameters()).device))
    module.train(was_training)
    maps = out["anomaly_map"].float().cpu().numpy()
    scores = out["score"].float().cpu().numpy()
    pics = images.permute(0, 2, 3, 1).cpu().numpy()
    return [(overlay(np.ascontiguousarray(p), m), f"{k} score={s:.3f}")
            for p, m, k, s in zip(pics, maps, keys, scores, strict=True)]


# ---------------------------------------------------------------- training scalars


class Meter:
    """Running sums between two logs: losses, samples, data-wait time, batch statistics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n, self.samples, self.waited, self.start = 0, 0, 0.0, time.perf_counter()

    def wait(self, loader: Any) -> Any:
        it = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t
            yield batch

    def add(self, losses: dict[str, float] | None, batch: dict[str, Any], global_batch: int) -> None:
        self.samples += global_batch
        for k in BATCH_COUNTS:
            self.sums["data/" + k] = self.sums.get("data/" + k, 0.0) + batch["stats"].get(k, 0)
        if losses is not None:
            self.n += 1
            for k, v in losses.items():
                self.sums["train/" + k] = self.sums.get("train/" + k, 0.0) + v

    def flush(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {k: (v / max(self.n, 1) if k.startswith("train/") else v) for k, v in self.sums.items()}
        out["perf/samples_per_s"] = self.samples / elapsed
        out["perf/data_wait"] = self.waited / elapsed
        self.reset()
        return out


def log_train(run: Run, local: dict[str, float], bar: Any) -> None:
    """Sum the interval's scalars over ranks (one all-reduce): counts as sums, the rest as means over ranks;
    then log on the main process."""
    keys = sorted(local)
    sums = sum_over_ranks(run.accelerator, [local[k] for k in keys])
    counts = {"data/" + k for k in BATCH_COUNTS}
    world = world_of(run.accelerator)
    scalars = {k: v if k in counts else v / world for k, v in zip(keys, sums, strict=True)}
    scalars["perf/samples_per_s"] = local["perf/samples_per_s"]  # global batches per second: same everywhere
    for g, group in enumerate(run.optimizer.param_groups):
        scalars[f"lr/{group.get('name', g)}"] = group["lr"]
    scalars["epoch"] = run.state.epoch + run.state.batch_in_epoch / max(1, run.steps_per_epoch)
    run.tracker.log(scalars, run.state.step)
    if bar is not None:
        bar.n = run.state.batch_in_epoch
        bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}",
                        sps=f"{scalars['perf/samples_per_s']:.1f}", refresh=True)


def progress(run: Run) -> Any:
    if not (run.accelerator.is_main_process and run.cfg.train.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.steps_per_epoch, initial=run.state.batch_in_epoch, desc=f"epoch {run.state.epoch}",
                dynamic_ncols=True, leave=False)


def write_debug(run: Run, out: dict[str, Any], keys: list[str]) -> None:
    """Per-rank parameter digest and local losses after each optimizer step (tests compare ranks)."""
    path = run.run_dir / "debug" / f"rank{run.accelerator.process_index}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": run.state.step, "checksum": param_checksum(run.accelerator.unwrap_model(run.model)),
              **{k: float(out[k].detach()) for k in LOSS_TERMS}, "keys": keys}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
