"""Streaming metrics against the exact in-memory computation, side by side in one run.

    .venv/bin/python bench/evaluate.py [--n 800] [--groups 4] [--size 256]

Prints: the time of each path at N (metrics only: the synthetic maps are made beforehand for the
exact path and on the fly for the streaming one, timed separately), the peak memory of the
streaming path at N and 4N (tracemalloc in a subprocess, maps made batch by batch), and the
largest absolute difference per metric over groups. Goals: >= 20x, flat memory (< +10 %), <= 1e-3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccl.metrics import METRICS, AnomalyMetrics  # noqa: E402

BATCH = 16


def synthetic(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Map i and its mask, the same whatever the batch: smooth noise plus raised defects of many sizes."""
    rng = np.random.default_rng(index)
    mask = np.zeros((size, size), np.uint8)
    if index % 2:
        for _ in range(rng.integers(1, 4)):
            r = int(rng.choice([1, 3, 8, 20, 40]))
            cv2.circle(mask, (int(rng.integers(0, size)), int(rng.integers(0, size))), r, 1, -1)
    noise = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 4)
    blurred_mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
    amap = 0.2 + noise + 0.08 * blurred_mask + 0.01 * rng.random((size, size), dtype=np.float32)
    return amap, mask.astype(bool)


def batches(n: int, size: int, groups: int):
    for start in range(0, n, BATCH):
        idx = range(start, min(n, start + BATCH))
        items = [synthetic(i, size) for i in idx]
        groups_of = [f"bench/g{(i // 2) % groups}" for i in idx]
        yield np.stack([a for a, _ in items]), np.stack([m for _, m in items]), groups_of


def streaming(n: int, size: int, groups: int) -> tuple[dict, float]:
    """Result and the seconds spent in the metrics (map generation excluded)."""
    m, spent = AnomalyMetrics(), 0.0
    for maps, masks, names in batches(n, size, groups):
        t = time.perf_counter()
        m.update(maps, masks, names)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    result = m.compute()
    return result, spent + time.perf_counter() - t


def exact_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """MVTec's AUPRO by sorting every pixel (the reference the streaming AUPRO must match)."""
    fp = np.zeros(maps.shape, np.float64)
    pro = np.zeros(maps.shape, np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        regions += count - 1
        fp[i] = labels == 0
        pro[i] = np.where(labels > 0, 1.0 / stats[labels, cv2.CC_STAT_AREA], 0.0)
    order = np.argsort(-maps.ravel(), kind="stable")
    s = maps.ravel()[order]
    fpr = np.cumsum(fp.ravel()[order]) / fp.sum()
    tpr = np.cumsum(pro.ravel()[order]) / regions
    keep = np.append(s[1:] != s[:-1], True)
    x, y = np.concatenate([[0], fpr[keep], [1]]), np.concatenate([[0], tpr[keep], [1]])
    k = np.searchsorted(x, limit, side="right")
    area = np.trapezoid(y[:k], x[:k])
    if x[k - 1] < limit:
        area += (limit - x[k - 1]) * (y[k - 1] + np.interp(limit, x[k - 1:k + 1], y[k - 1:k + 1])) / 2
    return area / limit


def f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * p * r / np.maximum(p + r, 1e-300)))


def exact(n: int, size: int, groups: int) -> tuple[dict, float]:
    """Per-group exact metrics with every map in memory, and the seconds spent on the metrics."""
    data = list(batches(n, size, groups))
    maps = np.concatenate([d[0] for d in data])
    masks = np.concatenate([d[1] for d in data])
    names = np.array([g for d in data for g in d[2]])
    t = time.perf_counter()
    out = {}
    for g in sorted(set(names)):
        sel = names == g
        mp, mk = maps[sel], masks[sel]
        img_scores, img_labels = mp.reshape(len(mp), -1).max(1), mk.reshape(len(mk), -1).any(1)
        px, lab = mp.ravel(), mk.ravel()
        out[g] = {"I-AUROC": roc_auc_score(img_labels, img_scores),
                  "I-AP": average_precision_score(img_labels, img_scores),
                  "I-F1max": f1max(img_labels, img_scores), "P-AUROC": roc_auc_score(lab, px),
                  "P-AP": average_precision_score(lab, px), "P-F1max": f1max(lab, px), "AUPRO": exact_pro(mp, mk)}
    return out, time.perf_counter() - t


def peak_memory(n: int, size: int, groups: int) -> int:
    """Peak traced bytes of the streaming path over n maps, in a fresh interpreter."""
    code = (f"import sys, tracemalloc; sys.path.insert(0, {str(Path(__file__).parent)!r}); import evaluate as b; "
            f"tracemalloc.start(); b.streaming({n}, {size}, {groups}); print(tracemalloc.get_traced_memory()[1])")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    stream, t_stream = streaming(a.n, a.size, a.groups)
    ref, t_exact = exact(a.n, a.size, a.groups)
    print(f"N={a.n} maps of {a.size}x{a.size} in {a.groups} groups ({a.n * a.size * a.size / 1e6:.1f} M pixels)")
    print(f"time: streaming {t_stream:.2f} s, exact {t_exact:.2f} s, ratio {t_exact / t_stream:.1f}x (goal >= 20x)")
    m1, m4 = peak_memory(a.n, a.size, a.groups), peak_memory(4 * a.n, a.size, a.groups)
    print(f"streaming peak memory: N {m1 / 2**20:.1f} MiB, 4N {m4 / 2**20:.1f} MiB, "
          f"growth {100 * (m4 / m1 - 1):+.1f} % (goal < +10 %)")
    diffs = {m: max(abs(stream["per_group"][g][m] - ref[g][m]) for g in ref) for m in METRICS}
    print("largest |streaming - exact| per metric (goal <= 1e-3):")
    print(json.dumps({m: float(f"{d:.2e}") for m, d in diffs.items()}))


if __name__ == "__main__":
    main()
