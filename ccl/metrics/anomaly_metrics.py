"""Streaming, mergeable anomaly-detection metrics per group (DESIGN.md section 6).

    m = AnomalyMetrics(["mvtec/bottle", "mvtec/cable"])
    m.update(anomaly_maps, masks, group_ids)          # any number of times, any batch size
    m.merge(other)                                    # states are sums (and image lists)
    result = m.compute()

Memory does not grow with the number of images except for three numbers per image
(score, label, group) kept for the exact image metrics. Pixel metrics and AUPRO come
from per-group histograms of ``bins`` bins (``ccl.metrics.binning``), one per grid kind k:

    pixel[g, k, 0]  normal pixels per bin
    pixel[g, k, 1]  anomalous pixels per bin
    pixel[g, k, 2]  anomalous pixels per bin weighted 1 / (size of their 8-connected region)
    counts[g]       (regions, clipped scores, images with pixel ground truth)

With ``score_range="auto"`` each group has two adaptive grids (equal-width and log-like) and
the exact extent of its scores; ``compute`` uses the grid with less tie mass. Two states merge
after ``align`` puts them on common grids (``grids()`` / ``common_grid``). Ranks merge with:
gather ``grids()``, ``align``, one all-reduce (sum) of ``state_tensors()``, an all-gather of
``image_arrays()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ccl.metrics.binning import KINDS, Grid, LinearBins, common_grid, regrid, widen
from ccl.metrics.curves import auroc, average_precision, exact_counts, f1_max, pro_auc, pro_points, roc_points
from ccl.metrics.regions import region_weights
from ccl.metrics.report import IMAGE_METRICS, PIXEL_METRICS, summarize

_N_COUNTS = 3  # regions, clipped, pixel images


def _numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


class AnomalyMetrics:
    """Per-group I-/P-AUROC, AP, F1max and AUPRO in constant memory."""

    def __init__(self, group_names: Sequence[str] = (), bins: int = 16384,
                 score_range: tuple[float, float] | str | None = "auto", fpr_limit: float = 0.3) -> None:
        """``bins`` per group; ``score_range=(lo, hi)``: linear bins on a known range, ``"auto"``: adaptive grid."""
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if bins < 2:
            raise ValueError(f"need at least 2 bins, got {bins}")
        if score_range is None or score_range == "auto":
            self.linear: LinearBins | None = None
        elif isinstance(score_range, str):
            raise ValueError(f"score_range must be (lo, hi) or 'auto', got {score_range!r}")
        else:
            self.linear = LinearBins(float(score_range[0]), float(score_range[1]), int(bins))
        self.bins, self.fpr_limit = int(bins), float(fpr_limit)
        self.kinds = ("linear",) if self.linear else KINDS
        self.group_names: list[str] = []
        self._ids: dict[str, int] = {}
        self.pixel = np.zeros((0, len(self.kinds), 3, self.bins), np.float64)
        self.counts = np.zeros((0, _N_COUNTS), np.float64)
        self._grid: list[list[Grid]] = []
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []
        for name in group_names:
            self.group_id(name)

    # ------------------------------------------------------------ groups and grids

    def group_id(self, name: str) -> int:
        """Index of group ``name``, adding it when new."""
        if name not in self._ids:
            self._ids[name] = len(self.group_names)
            self.group_names.append(name)
            self.pixel = np.concatenate([self.pixel, np.zeros((1,) + self.pixel.shape[1:])])
            self.counts = np.concatenate([self.counts, np.zeros((1, _N_COUNTS))])
            self._grid.append(self._empty_grids())
        return self._ids[name]

    def _empty_grids(self) -> list[Grid]:
        return [Grid(kind) for kind in self.kinds]

    def grids(self) -> dict[str, list[Grid]]:
        """``name -> [grid per kind]``: what ``common_grid`` needs from each state."""
        return dict(zip(self.group_names, self._grid))

    def align(self, names: Sequence[str], grids: dict[str, list[Grid]] | None = None) -> None:
        """Re-index the state on ``names`` (a superset of the current groups) and re-bin groups onto
        ``grids`` (from ``common_grid``): states aligned on the same names and grids have the same
        layout and can be summed."""
        missing = set(self.group_names) - set(names)
        if missing:
            raise ValueError(f"align: groups {sorted(missing)} are not in the new list")
        if len(set(names)) != len(names):
            raise ValueError("align: duplicate group names")
        order = {n: i for i, n in enumerate(names)}
        remap = np.array([order[n] for n in self.group_names], np.int64)
        pixel = np.zeros((len(names),) + self.pixel.shape[1:])
        counts = np.zeros((len(names), _N_COUNTS))
        pixel[remap], counts[remap] = self.pixel, self.counts
        old = self.grids()
        self._groups = [remap[g] for g in self._groups] if len(remap) else self._groups
        self.pixel, self.counts = pixel, counts
        self.group_names, self._ids = list(names), dict(order)
        self._grid = [old.get(n, self._empty_grids()) for n in names]
        for name, new in (grids or {}).items():
            g = self._ids[name]
            for k, (before, after) in enumerate(zip(self._grid[g], new)):
                if self.linear is None and after != before:
                    self.pixel[g, k] = regrid(self.pixel[g, k], before, after) if not before.empty else 0.0
            self._grid[g] = list(new)

    def _bin(self, g: int, flat: np.ndarray) -> list[np.ndarray]:
        """Bin indices per grid kind of the flat scores of group ``g``, widening its grids first."""
        if self.linear is not None:
            return [self.linear.index(flat)]
        lo, hi = float(flat.min()), float(flat.max())
        out = []
        for k, grid in enumerate(self._grid[g]):
            new = widen(grid, lo, hi, self.bins)
            if not grid.empty and (new.shift, new.start) != (grid.shift, grid.start):
                self.pixel[g, k] = regrid(self.pixel[g, k], grid, new)
            self._grid[g][k] = new
            out.append(new.index(flat))
        return out

    # ------------------------------------------------------------ update

    def update(self, anomaly_maps: Any, masks: Any = None, group_ids: Any = None,
               image_scores: Any = None, image_labels: Any = None) -> None:
        """Add a batch.

        anomaly_maps: (B, H, W) array/tensor, or a list of (H, W) maps (sizes may differ).
        masks: (B, H, W) bool/uint8, None (image-level only), or a list with per-sample None.
        group_ids: (B,) indices into ``group_names`` or group names (new names are added).
        image_scores: default the max of each map. image_labels: default "mask has a positive pixel"
        (required for samples without a mask).
        """
        maps = list(anomaly_maps) if isinstance(anomaly_maps, (list, tuple)) else _numpy(anomaly_maps)
        n = len(maps)
        if masks is None:
            mask_list = [None] * n
        else:
            mask_list = list(masks) if isinstance(masks, (list, tuple)) else _numpy(masks)
        if len(mask_list) != n:
            raise ValueError(f"{n} maps but {len(mask_list)} masks")
        groups = self._group_array(group_ids, n)
        maps = [_numpy(m, np.float32) for m in maps]
        masks_np = [None if m is None else _numpy(m).astype(bool) for m in mask_list]
        for i, (amap, mask) in enumerate(zip(maps, masks_np)):
            if amap.ndim != 2:
                raise ValueError(f"sample {i}: anomaly map must be 2-D (H, W), got shape {amap.shape}")
            if mask is not None and mask.shape != amap.shape:
                raise ValueError(f"sample {i}: mask {mask.shape} and anomaly map {amap.shape} differ in size")
            if not np.isfinite(amap).all():
                raise ValueError(f"sample {i}: anomaly map contains NaN or inf")
        scores = self._image_scores(image_scores, maps)
        labels = self._image_labels(image_labels, masks_np)
        self._scores.append(scores)
        self._labels.append(labels)
        self._groups.append(groups)
        for g in np.unique(groups):
            pick = [i for i in np.flatnonzero(groups == g) if masks_np[i] is not None]
            if pick:
                self._add_pixels(int(g), [maps[i] for i in pick], [masks_np[i] for i in pick])

    def _group_array(self, group_ids: Any, n: int) -> np.ndarray:
        if group_ids is None:
            raise ValueError("group_ids is required")
        ids = list(group_ids) if not isinstance(group_ids, (np.ndarray, torch.Tensor)) else _numpy(group_ids).tolist()
        if len(ids) != n:
            raise ValueError(f"{n} maps but {len(ids)} group ids")
        out = np.array([self.group_id(g) if isinstance(g, str) else int(g) for g in ids], np.int64)
        if len(out) and (out.min() < 0 or out.max() >= len(self.group_names)):
            raise ValueError(f"group ids must be in [0, {len(self.group_names)}), got {sorted(set(out.tolist()))}")
        return out

    @staticmethod
    def _image_scores(image_scores: Any, maps: list[np.ndarray]) -> np.ndarray:
        if image_scores is None:
            return np.array([m.max() for m in maps], np.float64)
        scores = _numpy(image_scores, np.float64).reshape(-1)
        if len(scores) != len(maps):
            raise ValueError(f"{len(maps)} maps but {len(scores)} image scores")
        if np.isnan(scores).any():
            raise ValueError("image scores contain NaN")
        return scores

    @staticmethod
    def _image_labels(image_labels: Any, masks: list[np.ndarray | None]) -> np.ndarray:
        if image_labels is not None:
            labels = _numpy(image_labels).reshape(-1).astype(np.int64)
            if len(labels) != len(masks):
                raise ValueError(f"{len(masks)} maps but {len(labels)} image labels")
            return (labels > 0).astype(np.int8)
        if any(m is None for m in masks):
            raise ValueError("samples without a mask need image_labels")
        return np.array([m.any() for m in masks], np.int8)

    def _add_pixels(self, g: int, maps: list[np.ndarray], masks: list[np.ndarray]) -> None:
        nb = self.bins
        same = len({m.shape for m in maps}) == 1
        flat_maps = np.stack(maps).reshape(-1) if same else np.concatenate([m.ravel() for m in maps])
        flat_masks = np.stack(masks).reshape(-1) if same else np.concatenate([m.ravel() for m in masks])
        indices = self._bin(g, flat_maps)
        for k, idx in enumerate(indices):
            both = np.bincount(idx + nb * flat_masks, minlength=2 * nb)  # normal bins, then anomalous bins
            self.pixel[g, k, 0] += both[:nb]
            self.pixel[g, k, 1] += both[nb:]
        if self.linear is not None:
            self.counts[g, 1] += np.count_nonzero((flat_maps < self.linear.lo) | (flat_maps > self.linear.hi))
        self.counts[g, 2] += len(maps)
        offset, where, weights = 0, [], []
        for mask in masks:
            if mask.any():
                pixels, w, regions = region_weights(mask)
                where.append(pixels + offset)
                weights.append(w)
                self.counts[g, 0] += regions
            offset += mask.size
        if where:
            sel, w = np.concatenate(where), np.concatenate(weights)
            for k, idx in enumerate(indices):
                self.pixel[g, k, 2] += np.bincount(idx[sel], weights=w, minlength=nb)

    # ------------------------------------------------------------ merging

    def merge(self, other: AnomalyMetrics) -> AnomalyMetrics:
        """Add ``other``'s state into this one (in place; groups matched by name; ``other`` is re-binned
        onto the common grids, which leaves its results unchanged)."""
        if (self.linear, self.bins) != (other.linear, other.bins):
            raise ValueError("cannot merge metrics with different binnings")
        names = self.group_names + [n for n in other.group_names if n not in self._ids]
        mine, theirs = self.grids(), other.grids()
        grids = {n: merged_grids([g[n] for g in (mine, theirs) if n in g], self.bins) for n in names}
        self.align(names, grids)
        other.align(other.group_names, {n: grids[n] for n in other.group_names})
        remap = np.array([self._ids[n] for n in other.group_names], np.int64)
        self.pixel[remap] += other.pixel
        self.counts[remap] += other.counts
        scores, labels, groups = other.image_arrays()
        self._scores.append(scores)
        self._labels.append(labels.astype(np.int8))
        self._groups.append(remap[groups] if len(groups) else groups)
        return self

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The summable state (float64); all-reduce (sum) it after ``align`` on the same groups and grids."""
        return {"pixel": torch.from_numpy(self.pixel.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for name, current in (("pixel", self.pixel), ("counts", self.counts)):
            if tuple(state[name].shape) != current.shape:
                raise ValueError(f"state {name!r} has shape {tuple(state[name].shape)}, expected {current.shape}")
        self.pixel = state["pixel"].detach().cpu().double().numpy().copy()
        self.counts = state["counts"].detach().cpu().double().numpy().copy()

    def image_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores float64, labels int64, group ids int64) of every image seen, in order."""
        if not self._scores:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate(self._scores), np.concatenate(self._labels).astype(np.int64),
                np.concatenate(self._groups).astype(np.int64))

    def set_image_arrays(self, scores: Iterable[float], labels: Iterable[int], groups: Iterable[int]) -> None:
        """Replace the image lists (e.g. with the all-gathered ones)."""
        self._scores = [np.asarray(scores, np.float64)]
        self._labels = [np.asarray(labels).astype(np.int8)]
        self._groups = [np.asarray(groups).astype(np.int64)]

    # ------------------------------------------------------------ results

    def compute(self) -> dict[str, Any]:
        """Per group, per dataset and overall metrics (None where undefined) and image thresholds.

        ``threshold``: the F1-optimal image threshold over all images pooled (``pooled`` holds the
        image metrics of that pool); ``thresholds[group]``: the same per group.
        """
        scores, labels, groups = self.image_arrays()
        per_group, thresholds, counts = {}, {}, {}
        for g, name in enumerate(self.group_names):
            sel = groups == g
            image, thresholds[name] = _image_metrics(scores[sel], labels[sel])
            per_group[name] = {**image, **self._pixel_metrics(g)}
            counts[name] = {"images": int(sel.sum()), "anomalous": int(labels[sel].sum()),
                            "pixel_images": int(self.counts[g, 2]), "regions": int(self.counts[g, 0]),
                            "clipped_pixels": int(self.counts[g, 1]), **self._grid_used(g)}
        pooled, threshold = _image_metrics(scores, labels)  # one threshold for class-agnostic prediction
        result = summarize(per_group)
        binning = self.linear.describe() if self.linear else {"kind": "auto", "bins": self.bins}
        result.update(pooled=pooled, threshold=threshold, thresholds=thresholds, counts=counts,
                      binning=binning, fpr_limit=self.fpr_limit)
        return result

    def _kind(self, g: int) -> int:
        """The grid kind with the least tie mass (normal and anomalous pixels sharing a bin)."""
        neg, pos, overlap = self.pixel[g, :, 0], self.pixel[g, :, 1], self.pixel[g, :, 2]
        return int(np.argmin((neg * pos).sum(axis=1) + (neg * overlap).sum(axis=1)))

    def _grid_used(self, g: int) -> dict[str, Any]:
        if self.linear is not None:
            return {"grid": "linear", "bin_width": (self.linear.hi - self.linear.lo) / self.bins}
        grid = self._grid[g][self._kind(g)]
        return {"grid": grid.kind, "bin_width": grid.width()}

    def _pixel_metrics(self, g: int) -> dict[str, float | None]:
        neg, pos, overlap = self.pixel[g, self._kind(g)]
        f1 = f1_max(neg, pos)
        values = {"P-AUROC": auroc(neg, pos), "P-AP": average_precision(neg, pos),
                  "P-F1max": f1[0] if f1 else None,
                  "AUPRO": pro_auc(neg, overlap, self.counts[g, 0], self.fpr_limit)}
        return {k: values[k] for k in PIXEL_METRICS}

    def curves(self, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Pixel ROC (FPR, TPR) and PRO (FPR, PRO) curves of a group, for plots."""
        g = self._ids[name]
        neg, pos, overlap = self.pixel[g, self._kind(g)]
        return {"roc": roc_points(neg, pos), "pro": pro_points(neg, overlap, self.counts[g, 0])}


def _image_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float | None], float | None]:
    """Exact image metrics and the F1-optimal threshold (anomalous if score >= threshold).

    The threshold lies halfway between the lowest score called anomalous and the next lower
    score: the same F1 on these images, and a margin on both sides for new ones.
    """
    levels, neg, pos = exact_counts(scores, labels)
    f1 = f1_max(neg, pos)
    values = {"I-AUROC": auroc(neg, pos), "I-AP": average_precision(neg, pos), "I-F1max": f1[0] if f1 else None}
    if f1 is None:
        return {k: values[k] for k in IMAGE_METRICS}, None
    best = f1[1]
    threshold = levels[best] if best == 0 else (levels[best] + levels[best - 1]) / 2
    return {k: values[k] for k in IMAGE_METRICS}, float(threshold)


def merged_grids(states: list[list[Grid]], bins: int) -> list[Grid]:
    """Per grid kind, the common grid of several states' grids of one group (``AnomalyMetrics.grids()[name]``)."""
    return [common_grid(list(per_kind), bins) for per_kind in zip(*states)]
