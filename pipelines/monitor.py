"""What the trainer shows besides scalars: class separation of the global features and heatmaps.

- ``class_separation``: V-measure of K-means clusters (K = number of classes) against the classes.
- ``tsne_image``: the paper's Fig. 1b, a t-SNE scatter of the global features coloured by class.
- ``heatmaps``: anomaly-map overlays of a fixed set of validation images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from pipelines.visualize import overlay


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
def heatmaps(module: Any, images: torch.Tensor, keys: Sequence[str], to_input: Any) -> list[tuple[np.ndarray, str]]:
    """Overlays of ``images`` (B, 3, S, S) uint8 with the model's anomaly maps, captioned with key and score."""
    was_training = module.training
    module.eval()
    out = module(to_input(images))
    module.train(was_training)
    maps = out["anomaly_map"].float().cpu().numpy()
    scores = out["score"].float().cpu().numpy()
    pics = images.permute(0, 2, 3, 1).cpu().numpy()
    return [(overlay(np.ascontiguousarray(p), m), f"{k} score={s:.3f}") for p, m, k, s in zip(pics, maps, keys, scores)]
