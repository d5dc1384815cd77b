"""Threshold metrics from per-threshold counts: the one code path for exact and binned metrics.

Inputs are counts per score level in ascending score order: ``neg[i]`` / ``pos[i]``
samples (or pixels) whose score falls at level i. For exact metrics the levels are
the distinct scores (``exact_counts``); for streaming metrics they are histogram
bins. Predicting "anomalous" for score >= level i gives TP = sum(pos[i:]) and
FP = sum(neg[i:]), so ties are never split, as in scikit-learn.

Every function returns None when the metric is undefined (no positive or no negative).
"""

from __future__ import annotations

import numpy as np


def exact_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (ascending) and the negative / positive counts at each."""
    levels, inverse = np.unique(np.asarray(scores, np.float64), return_inverse=True)
    labels = np.asarray(labels).astype(bool).ravel()
    pos = np.bincount(inverse.ravel(), weights=labels, minlength=len(levels))
    neg = np.bincount(inverse.ravel(), weights=~labels, minlength=len(levels))
    return levels, neg, pos


def _descending_cumsum(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FP and TP at every threshold, highest threshold first, over non-empty levels only."""
    keep = (neg + pos) > 0
    fp = np.cumsum(np.asarray(neg, np.float64)[keep][::-1])
    tp = np.cumsum(np.asarray(pos, np.float64)[keep][::-1])
    return fp, tp


def auroc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """Area under the ROC curve (trapezoid; tied levels give a diagonal step)."""
    fp, tp = _descending_cumsum(neg, pos)
    if len(fp) == 0 or fp[-1] <= 0 or tp[-1] <= 0:
        return None
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    tpr = np.concatenate([[0.0], tp / tp[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def average_precision(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """AP = sum over thresholds of (recall increase) * precision (scikit-learn's definition)."""
    fp, tp = _descending_cumsum(neg, pos)
    if len(fp) == 0 or tp[-1] <= 0 or fp[-1] <= 0:
        return None
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def f1_max(neg: np.ndarray, pos: np.ndarray) -> tuple[float, int] | None:
    """Best F1 over thresholds and the level index (into the full ascending ``neg``/``pos``) reaching it."""
    neg = np.asarray(neg, np.float64)
    pos = np.asarray(pos, np.float64)
    fp = np.cumsum(neg[::-1])[::-1]  # FP, TP when predicting score >= level i
    tp = np.cumsum(pos[::-1])[::-1]
    total_pos = tp[0] if len(tp) else 0.0
    if total_pos <= 0 or fp[0] <= 0:
        return None
    f1 = 2 * tp / (tp + fp + total_pos)  # = 2PR / (P + R)
    f1[(neg + pos) == 0] = -1  # only thresholds at observed levels
    best = int(np.argmax(f1))
    return float(f1[best]), best


def pro_auc(neg: np.ndarray, region_overlap: np.ndarray, regions: float, fpr_limit: float = 0.3) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec's AUPRO).

    ``region_overlap[i]``: sum over regions of (region pixels at level i) / region size, so
    its reverse cumulative sum over ``regions`` is the mean per-region overlap PRO(t).
    The curve runs from (0, 0) through every threshold; it is interpolated linearly at the limit.
    """
    fpr, pro = pro_points(neg, region_overlap, regions)
    return None if len(fpr) == 0 else _area_to(fpr, pro, fpr_limit) / fpr_limit


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) (x non-decreasing) for x in [0, x_max], interpolating at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = float(np.sum(np.diff(x[:inside]) * (y[1:inside] + y[: inside - 1])) / 2)
    if inside < len(x) and x[inside - 1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2
    return area


def roc_points(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, for plots."""
    fp, tp = _descending_cumsum(neg, pos)
    if len(fp) == 0 or fp[-1] <= 0 or tp[-1] <= 0:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([[0.0], fp / fp[-1]]), np.concatenate([[0.0], tp / tp[-1]])


def pro_points(neg: np.ndarray, region_overlap: np.ndarray, regions: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) of the PRO curve from (0, 0) through every threshold; empty when undefined."""
    neg = np.asarray(neg, np.float64)
    region_overlap = np.asarray(region_overlap, np.float64)
    total_neg = neg.sum()
    if regions <= 0 or total_neg <= 0:
        return np.zeros(0), np.zeros(0)
    keep = (neg + region_overlap) > 0
    fpr = np.concatenate([[0.0], np.cumsum(neg[keep][::-1]) / total_neg])
    pro = np.concatenate([[0.0], np.cumsum(region_overlap[keep][::-1]) / regions])
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)  # guard against float rounding above 1
