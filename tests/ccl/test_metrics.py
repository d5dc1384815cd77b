"""Streaming metrics against the exact computation: scikit-learn and an independent exact AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from ccl.metrics import METRICS, AnomalyMetrics
from ccl.metrics.binning import Grid, fit, key_to_score, order_keys, regrid

TOL = 1e-3
SIZE = 48


# ---------------------------------------------------------------- data


def random_mask(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Regions from 1 pixel to a quarter of the image, some touching only diagonally."""
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 5)):
        h, w = rng.integers(1, size // 2, size=2) if rng.random() < 0.6 else rng.integers(1, 3, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y:y + h, x:x + w] = True
    if rng.random() < 0.3:  # a diagonal chain: one region under 8-connectivity, several under 4
        y, x = rng.integers(0, size - 4, size=2)
        mask[y + np.arange(4), x + np.arange(4)] = True
    return mask


def dataset(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, list, np.ndarray]:
    """Maps, masks (None for image-level-only samples) and image labels."""
    masks = [random_mask(rng) if rng.random() < 0.5 else np.zeros((SIZE, SIZE), bool) for _ in range(n)]
    mask_arr = np.stack(masks).astype(np.float32)
    smooth = ndimage.gaussian_filter(rng.random((n, SIZE, SIZE)), sigma=(0, 2, 2))
    base = smooth + 0.08 * mask_arr + 0.05 * rng.random((n, SIZE, SIZE))
    if kind == "smooth":
        maps = base
    elif kind == "tied":  # a few dozen distinct values only
        maps = np.round(base * 20) / 20
    elif kind == "magnitudes":  # 1e-4 .. 1e2
        maps = 10.0 ** (6 * (base - base.min()) / (base.max() - base.min()) - 4)
    elif kind == "signed":
        maps = (base - base.mean()) * 1e3
    else:
        raise ValueError(kind)
    labels = np.array([m.any() for m in masks], int)
    out_masks: list = list(masks)
    for i in rng.choice(n, size=n // 6, replace=False):  # image-level-only samples
        out_masks[i] = None
        labels[i] = int(rng.random() < 0.5)
    return maps.astype(np.float32), out_masks, labels


# ---------------------------------------------------------------- exact references


def exact_pro_auc(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """MVTec's AUPRO by sorting all pixels: exact thresholds, trapezoid, interpolated at the limit."""
    scores, fp_step, pro_step, regions = [], [], [], 0
    for amap, mask in zip(maps, masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += count
        sizes = np.bincount(labeled.ravel())
        scores.append(amap.ravel())
        fp_step.append((labeled.ravel() == 0).astype(float))
        step = np.where(labeled.ravel() > 0, 1.0 / sizes[labeled.ravel()], 0.0)
        pro_step.append(step)
    scores, fp_step, pro_step = map(np.concatenate, (scores, fp_step, pro_step))
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fpr = np.cumsum(fp_step[order]) / fp_step.sum()
    pro = np.cumsum(pro_step[order]) / regions
    last_of_tie = np.append(s[1:] != s[:-1], True)
    fpr = np.concatenate([[0], fpr[last_of_tie], [1]])
    pro = np.concatenate([[0], pro[last_of_tie], [1]])
    k = np.searchsorted(fpr, limit, side="right")
    area = np.trapezoid(pro[:k], fpr[:k])
    if fpr[k - 1] < limit:
        y = np.interp(limit, fpr[k - 1:k + 1], pro[k - 1:k + 1])
        area += (limit - fpr[k - 1]) * (pro[k - 1] + y) / 2
    return area / limit


def f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    return float(np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)))


def exact_metrics(maps: np.ndarray, masks: list, labels: np.ndarray) -> dict[str, float]:
    scores = maps.reshape(len(maps), -1).max(1)
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    px_scores = maps[with_mask].ravel()
    px_labels = np.stack([masks[i] for i in with_mask]).ravel()
    return {
        "I-AUROC": roc_auc_score(labels, scores),
        "I-AP": average_precision_score(labels, scores),
        "I-F1max": f1max(labels, scores),
        "P-AUROC": roc_auc_score(px_labels, px_scores),
        "P-AP": average_precision_score(px_labels, px_scores),
        "P-F1max": f1max(px_labels, px_scores),
        "AUPRO": exact_pro_auc([maps[i] for i in with_mask], [masks[i] for i in with_mask]),
    }


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["smooth", "tied", "magnitudes", "signed"])
def test_every_metric_matches_the_exact_computation(kind: str) -> None:
    rng = np.random.default_rng({"smooth": 0, "tied": 1, "magnitudes": 2, "signed": 3}[kind])
    maps, masks, labels = dataset(rng, 60, kind)
    m = AnomalyMetrics(["a/x"])
    for start in range(0, 60, 16):  # uneven batches
        sl = slice(start, start + 16)
        m.update(maps[sl], masks[sl], [0] * len(maps[sl]), image_labels=labels[sl])
    got = m.compute()["per_group"]["a/x"]
    want = exact_metrics(maps, masks, labels)
    for metric in METRICS:
        assert got[metric] == pytest.approx(want[metric], abs=TOL), metric
    for metric in ("I-AUROC", "I-AP", "I-F1max"):  # image metrics are exact
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric


def test_linear_bins_on_a_known_range_match_too() -> None:
    maps, masks, labels = dataset(np.random.default_rng(4), 40, "smooth")
    m = AnomalyMetrics(["g"], bins=8192, score_range=(float(maps.min()), float(maps.max())))
    m.update(maps, masks, np.zeros(40, int), image_labels=labels)
    got, want = m.compute()["per_group"]["g"], exact_metrics(maps, masks, labels)
    for metric in METRICS:
        assert got[metric] == pytest.approx(want[metric], abs=TOL), metric


def test_groups_datasets_and_undefined_metrics() -> None:
    rng = np.random.default_rng(5)
    maps, masks, labels = dataset(rng, 40, "smooth")
    masks = [np.zeros((SIZE, SIZE), bool) if m is None else m for m in masks]
    labels = np.array([m.any() for m in masks], int)
    groups = np.array(["mvtec/a", "mvtec/b", "visa/c", "visa/normal"])[np.arange(40) % 4]
    normal = groups == "visa/normal"
    for i in np.flatnonzero(normal):
        masks[i] = np.zeros((SIZE, SIZE), bool)
    labels[normal] = 0
    m = AnomalyMetrics()
    m.update(maps, masks, list(groups))
    res = m.compute()
    assert set(res["per_group"]["visa/normal"].values()) == {None}  # one class only: nothing defined
    for name in ("mvtec/a", "mvtec/b", "visa/c"):
        sel = groups == name
        want = exact_metrics(maps[sel], [masks[i] for i in np.flatnonzero(sel)], labels[sel])
        for metric in METRICS:
            assert res["per_group"][name][metric] == pytest.approx(want[metric], abs=TOL)
    for metric in METRICS:
        per = res["per_group"]
        mvtec_mean = (per["mvtec/a"][metric] + per["mvtec/b"][metric]) / 2
        assert res["per_dataset"]["mvtec"][metric] == pytest.approx(mvtec_mean)
        assert res["per_dataset"]["visa"][metric] == pytest.approx(per["visa/c"][metric])  # None left out
        assert res["mean"][metric] == pytest.approx(np.mean([per[g][metric] for g in ("mvtec/a", "mvtec/b", "visa/c")]))


def test_image_level_only_group_has_no_pixel_metrics() -> None:
    rng = np.random.default_rng(6)
    maps = rng.random((10, 8, 8)).astype(np.float32)
    labels = np.arange(10) % 2
    m = AnomalyMetrics(["img"])
    m.update(maps, None, np.zeros(10, int), image_labels=labels)
    res = m.compute()["per_group"]["img"]
    assert res["I-AUROC"] == pytest.approx(roc_auc_score(labels, maps.reshape(10, -1).max(1)))
    assert all(res[k] is None for k in ("P-AUROC", "P-AP", "P-F1max", "AUPRO"))


def test_merge_of_disjoint_parts_equals_one_state() -> None:
    maps, masks, labels = dataset(np.random.default_rng(7), 45, "smooth")
    groups = np.array(["d/a", "d/b", "e/c"])[np.arange(45) % 3]
    whole = AnomalyMetrics()
    whole.update(maps, masks, list(groups), image_labels=labels)
    parts = []
    for k in range(3):  # each part sees its groups in a different order
        part = AnomalyMetrics(["e/c"] if k == 1 else [])
        sl = slice(15 * k, 15 * (k + 1))
        part.update(maps[sl], masks[sl], list(groups[sl][::-1])[::-1], image_labels=labels[sl])
        parts.append(part)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert _same(merged.compute(), whole.compute())


def test_state_tensors_sum_like_an_all_reduce() -> None:
    maps, masks, labels = dataset(np.random.default_rng(8), 30, "tied")
    groups = np.array(["d/a", "d/b"])[np.arange(30) % 2]
    whole = AnomalyMetrics()
    whole.update(maps, masks, list(groups), image_labels=labels)
    ranks = [AnomalyMetrics(), AnomalyMetrics()]
    ranks[0].update(maps[:10], masks[:10], list(groups[:10]), image_labels=labels[:10])
    ranks[1].update(maps[10:], masks[10:], list(groups[10:][::-1]), image_labels=labels[10:][::-1])
    ranks[1].set_image_arrays(*[a for a in ranks[1].image_arrays()])  # no-op round trip
    names = sorted(set(ranks[0].group_names) | set(ranks[1].group_names))
    for r in ranks:
        r.align(names)
    total = {k: ranks[0].state_tensors()[k] + ranks[1].state_tensors()[k] for k in ("pixel", "counts")}
    arrays = [np.concatenate(x) for x in zip(ranks[0].image_arrays(), ranks[1].image_arrays())]
    ranks[0].load_state_tensors(total)
    ranks[0].set_image_arrays(*arrays)
    # rank 1 saw its labels reversed relative to its groups: rebuild the truth the same way
    whole = AnomalyMetrics()
    whole.update(maps[:10], masks[:10], list(groups[:10]), image_labels=labels[:10])
    whole.update(maps[10:], masks[10:], list(groups[10:][::-1]), image_labels=labels[10:][::-1])
    assert _same(ranks[0].compute(), whole.compute())


def test_f1_optimal_threshold_reaches_f1max() -> None:
    rng = np.random.default_rng(9)
    scores = np.round(rng.random(200), 2)
    labels = (scores + 0.3 * rng.random(200) > 0.7).astype(int)
    m = AnomalyMetrics(["g"])
    m.update(np.zeros((200, 2, 2)), None, np.zeros(200, int), image_scores=scores, image_labels=labels)
    res = m.compute()
    assert f1_score(labels, scores >= res["threshold"]) == pytest.approx(f1max(labels, scores), abs=1e-12)
    assert res["thresholds"]["g"] == res["threshold"]


def test_bad_input_is_rejected() -> None:
    m = AnomalyMetrics(["g"])
    with pytest.raises(ValueError, match="differ in size"):
        m.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool), [0])
    with pytest.raises(ValueError, match="NaN"):
        m.update(np.full((1, 4, 4), np.nan), np.zeros((1, 4, 4), bool), [0])
    with pytest.raises(ValueError, match="image_labels"):
        m.update(np.zeros((1, 4, 4)), [None], [0])
    with pytest.raises(ValueError, match="group ids"):
        m.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool), [3])


def _same(a: dict, b: dict) -> bool:
    for name in b["per_group"]:
        for metric in METRICS:
            x, y = a["per_group"][name][metric], b["per_group"][name][metric]
            if (x is None) != (y is None) or (x is not None and abs(x - y) > 1e-9):
                return False
    return a["threshold"] == pytest.approx(b["threshold"])


def test_order_keys_are_monotone_and_invertible() -> None:
    rng = np.random.default_rng(10)
    values = rng.normal(0, 1, 5000) * 10.0 ** rng.uniform(-30, 30, 5000)
    values = np.sort(np.concatenate([values, [0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf]]).astype(np.float32))
    keys = order_keys(values)
    assert np.all(np.diff(keys) >= 0) and np.all((np.diff(keys) == 0) == (np.diff(values) == 0))
    assert np.array_equal(key_to_score(keys), values.astype(np.float64))


@pytest.mark.parametrize("kind", ["value", "order"])
def test_grids_coarsen_exactly(kind: str) -> None:
    rng = np.random.default_rng(12)
    x = (rng.random(3000) * 3 + 0.5).astype(np.float32)
    first = np.sort(x)[1000:1100]  # a narrow band first: a fine grid
    fine = fit(Grid(kind), float(first.min()), float(first.max()), 256)
    counts = np.bincount(fine.index(first), minlength=256)[None].astype(float)
    coarse = fit(Grid(kind), float(x.min()), float(x.max()), 256, fine.shift)
    assert coarse.shift > fine.shift
    direct = np.bincount(coarse.index(first), minlength=256)
    assert np.array_equal(regrid(counts, fine, coarse)[0], direct)
    assert np.all(np.diff(coarse.index(np.sort(x))) >= 0) and coarse.index(x).max() < 256


def test_grid_widening_midstream_equals_one_pass() -> None:
    """Scores that widen the range batch after batch (coarsening on the way) give the one-pass histogram."""
    rng = np.random.default_rng(11)
    maps = [rng.random((4, 16, 16)).astype(np.float32) * 10.0**k for k in range(-3, 3)]
    masks = [rng.random((4, 16, 16)) < 0.1 for _ in maps]
    streamed = AnomalyMetrics(bins=512)
    for m, k in zip(maps, masks):
        streamed.update(m, k, ["g"] * 4)
    once = AnomalyMetrics(bins=512)
    once.update(np.concatenate(maps[::-1]), np.concatenate(masks[::-1]), ["g"] * 24)
    assert streamed.grids() == once.grids()
    np.testing.assert_allclose(streamed.pixel, once.pixel)


def test_markdown_table_shows_class_names_as_text() -> None:
    from ccl.metrics.report import to_markdown

    scores = {"I-AUROC": 0.5}
    table = to_markdown({"per_group": {"x/a|b <img src=y>": scores}, "mean": scores})
    row = table.splitlines()[2]
    assert row.startswith("| x/a\\|b &lt;img src=y&gt; | 50.0 |")
