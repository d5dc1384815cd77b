"""Losses against independent loop implementations of the paper's equations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ccl.losses import (
    global_contrastive_loss,
    global_losses,
    kd_loss,
    local_contrastive_loss,
    npairs_loss,
    supcon_loss,
    triplet_loss,
)

TAU = 0.1


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def supcon_reference(features: torch.Tensor, labels: list[int], tau: float = TAU) -> float:
    """Eq. 1 with plain loops; anchors without positives contribute 0 and are counted."""
    f = [_unit(x) for x in features]
    n, total = len(f), 0.0
    for i in range(n):
        denom = sum(math.exp(float(f[i] @ f[a]) / tau) for a in range(n) if a != i)
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if positives:
            total += -sum(math.log(math.exp(float(f[i] @ f[p]) / tau) / denom) for p in positives) / len(positives)
    return total / n


def local_reference(a: torch.Tensor, b: torch.Tensor, labels: list[int], window, tau: float = TAU) -> float:
    """Eq. 2-4 with plain loops: both views anchor, windowed arg-max positives in every same-class view."""
    views, view_labels = [], []
    for i in range(a.shape[0]):
        views += [F.normalize(a[i], dim=0), F.normalize(b[i], dim=0)]  # (C, h, w)
        view_labels += [labels[i], labels[i]]
    _, h, w = views[0].shape

    def in_window(y, x, yy, xx):
        return window == "full" or (abs(yy - y) <= window // 2 and abs(xx - x) <= window // 2)

    total, count = 0.0, 0
    for u, vu in enumerate(views):
        for y in range(h):
            for x in range(w):
                f = vu[:, y, x]
                win = [(yy, xx) for yy in range(h) for xx in range(w) if in_window(y, x, yy, xx)]
                sims = {v: [float(f @ views[v][:, yy, xx]) for yy, xx in win] for v in range(len(views)) if v != u}
                denom = sum(math.exp(s / tau) for v in sims for s in sims[v])
                partners = [v for v in sims if view_labels[v] == view_labels[u]]
                terms = [math.log(math.exp(max(sims[v]) / tau) / denom) for v in partners]
                total += -sum(terms) / len(terms) if terms else 0.0
                count += 1
    return total / count


def local_reference_switches(a, b, labels, window, positives, negatives, match=None, tau: float = TAU) -> float:
    """Eq. 2-4 with plain loops, every reading: positives "class" (every same-class view) or "view" (the
    sample's other view; other same-class samples left out); negatives "window" or "all" positions;
    ``match`` (ma, mb) picks the positive position by its own cosine similarity."""
    views, mviews, view_labels, sample = [], [], [], []
    for i in range(a.shape[0]):
        views += [F.normalize(a[i], dim=0), F.normalize(b[i], dim=0)]
        if match is not None:
            mviews += [F.normalize(match[0][i], dim=0), F.normalize(match[1][i], dim=0)]
        view_labels += [labels[i], labels[i]]
        sample += [i, i]
    _, h, w = views[0].shape
    every = [(yy, xx) for yy in range(h) for xx in range(w)]
    total, count = 0.0, 0
    for u, vu in enumerate(views):
        if positives == "class":
            partners = [v for v in range(len(views)) if v != u and view_labels[v] == view_labels[u]]
            cands = [v for v in range(len(views)) if v != u]
        else:
            partners = [v for v in range(len(views)) if v != u and sample[v] == sample[u]]
            cands = partners + [v for v in range(len(views)) if view_labels[v] != view_labels[u]]
        for y in range(h):
            for x in range(w):
                f = vu[:, y, x]
                win = [(yy, xx) for yy, xx in every if window == "full" or
                       (abs(yy - y) <= window // 2 and abs(xx - x) <= window // 2)]
                den_positions = win if negatives == "window" else every
                denom = sum(math.exp(float(f @ views[v][:, yy, xx]) / tau) for v in cands for yy, xx in den_positions)
                terms = []
                for p in partners:
                    if match is None:
                        best = max(float(f @ views[p][:, yy, xx]) for yy, xx in win)
                    else:
                        mf = mviews[u][:, y, x]
                        yy, xx = max(win, key=lambda pos: float(mf @ mviews[p][:, pos[0], pos[1]]))
                        best = float(f @ views[p][:, yy, xx])
                    terms.append(math.log(math.exp(best / tau) / denom))
                total += -sum(terms) / len(terms) if terms else 0.0
                count += 1
    return total / count


def test_supcon_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 5, generator=g, dtype=torch.float64)
    labels = [0, 1, 0, 2, 1, 0, 3, 2, 1]  # class 3 has a single sample: no positives, counted as 0
    got = supcon_loss(feats, torch.tensor(labels), temperature=TAU)
    assert got.item() == pytest.approx(supcon_reference(feats, labels), rel=1e-10)


def test_supcon_is_stable_for_confident_logits():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float32)
    loss = supcon_loss(feats, torch.tensor([0, 0, 1, 1]), temperature=0.001)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_global_contrastive_counts_other_view_and_same_class_views():
    g = torch.Generator().manual_seed(1)
    anchor, augmented = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = [0, 1, 0, 2]
    got = global_contrastive_loss(anchor, augmented, torch.tensor(labels), temperature=TAU)
    ref = supcon_reference(torch.cat([anchor, augmented]), labels + labels)
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_infonce_uses_instance_positives_only():
    g = torch.Generator().manual_seed(2)
    anchor, augmented = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    got = global_losses["infonce"](anchor, augmented, labels, temperature=TAU)
    ref = supcon_reference(torch.cat([anchor, augmented]), [0, 1, 2, 3] * 2)
    assert got.item() == pytest.approx(ref, rel=1e-10)
    assert got.item() != pytest.approx(global_contrastive_loss(anchor, augmented, labels, TAU).item(), rel=1e-3)


def test_npairs_and_triplet_match_loops():
    g = torch.Generator().manual_seed(3)
    anchor, augmented = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = [0, 1, 0, 2]
    f = F.normalize(torch.cat([anchor, augmented]), dim=1)
    lab, n = labels + labels, 8
    npairs_ref, triplet_ref = 0.0, 0.0
    for i in range(n):
        s = lambda j, i=i: float(f[i] @ f[j])  # noqa: E731
        other_view = (i + 4) % n
        negatives = [j for j in range(n) if lab[j] != lab[i]]
        npairs_ref += math.log(1 + sum(math.exp((s(j) - s(other_view)) / TAU) for j in negatives))
        positives = [j for j in range(n) if j != i and lab[j] == lab[i]]
        triplet_ref += max(0.0, 0.2 + max(s(j) for j in negatives) - min(s(j) for j in positives))
    t = torch.tensor(labels)
    assert npairs_loss(anchor, augmented, t, TAU).item() == pytest.approx(npairs_ref / n, rel=1e-10)
    assert triplet_loss(anchor, augmented, t, TAU).item() == pytest.approx(triplet_ref / n, rel=1e-10)


def test_local_hand_worked_orthogonal_classes():
    # Sample 0 points along e1, sample 1 along e2, 1x1 maps: for every anchor the only positive is
    # its other view (similarity 1) and the two views of the other class are negatives (similarity 0).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).view(2, 2, 1, 1)
    loss = local_contrastive_loss(a, a.clone(), torch.tensor([0, 1]), temperature=TAU, window=1)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / TAU)), rel=1e-12)


@pytest.mark.parametrize("window", [1, 3, "full"])
def test_local_matches_loop_reference(window):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, 5, 4, 4, generator=g, dtype=torch.float64)
    labels = [0, 1, 0]  # sample 1 has only its own other view as partner
    got = local_contrastive_loss(a, b, torch.tensor(labels), temperature=TAU, window=window)
    assert got.item() == pytest.approx(local_reference(a, b, labels, window), rel=1e-10)


def test_local_windows_differ():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 3, 5, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    values = {w: local_contrastive_loss(a, b, labels, TAU, window=w).item() for w in (1, 3, "full")}
    assert len({round(v, 8) for v in values.values()}) == 3
    # A window reaching every position from every centre (k >= 2*4-1) is the full window.
    assert local_contrastive_loss(a, b, labels, TAU, window=7).item() == pytest.approx(values["full"], rel=1e-12)


@pytest.mark.parametrize("window", [1, 3, "full"])
def test_local_chunked_equals_unchunked_with_gradients(window):
    g = torch.Generator().manual_seed(6)
    a0, b0 = torch.randn(2, 4, 6, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    results = []
    for chunk in (10**6, 7):  # one block vs many checkpointed blocks
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss = local_contrastive_loss(a, b, labels, TAU, window=window, chunk=chunk)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_local_rejects_bad_window():
    a = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="odd"):
        local_contrastive_loss(a, a, torch.tensor([0, 1]), window=2)


def test_kd_flat_and_pixel_match_formulas():
    g = torch.Generator().manual_seed(7)
    t = [torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64),
         torch.randn(3, 8, 2, 2, generator=g, dtype=torch.float64)]
    s = [x + 0.7 * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in t]
    flat_ref, pixel_ref = 0.0, 0.0
    for ti, si in zip(t, s):
        flat_ref += sum(1 - float(_unit(ti[n].flatten()) @ _unit(si[n].flatten())) for n in range(3)) / 3
        b, _, h, w = ti.shape
        pix = [1 - float(_unit(ti[n, :, y, x]) @ _unit(si[n, :, y, x]))
               for n in range(b) for y in range(h) for x in range(w)]
        pixel_ref += sum(pix) / len(pix)
    assert kd_loss(t, s, "flat").item() == pytest.approx(flat_ref, rel=1e-10)
    assert kd_loss(t, s, "pixel").item() == pytest.approx(pixel_ref, rel=1e-10)
    assert kd_loss(t, [x.clone() for x in t]).item() == pytest.approx(0.0, abs=1e-12)


def test_global_registry_names_and_signature():
    assert set(global_losses) == {"supcon", "triplet", "npairs", "infonce"}
    g = torch.Generator().manual_seed(8)
    anchor = torch.randn(4, 6, generator=g, requires_grad=True)
    augmented = torch.randn(4, 6, generator=g)
    for name, fn in global_losses.items():
        loss = fn(anchor, augmented, torch.tensor([0, 1, 0, 1]), temperature=TAU, rank=0, world_size=1)
        assert loss.dim() == 0 and torch.isfinite(loss), name
        (grad,) = torch.autograd.grad(loss, anchor)
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("window", [1, 3, "full"])
def test_local_blocks_respect_the_chunk_bound(window, monkeypatch):
    from ccl.losses import local as local_module

    sizes = []
    real = local_module._reduce
    monkeypatch.setattr(local_module, "_reduce", lambda sims, *a: sizes.append(sims.numel()) or real(sims, *a))
    a = torch.randn(4, 6, 8, 8, requires_grad=True)
    local_contrastive_loss(a, a * 2, torch.tensor([0, 1, 0, 1]), TAU, window=window, chunk=40).backward()
    per_position = 8 * 8 * (64 if window == "full" else window * window)
    assert len(sizes) > 1
    assert max(sizes) <= max(40 * 40, per_position)


@pytest.mark.parametrize("window", [1, 3, "full"])
@pytest.mark.parametrize("positives,negatives,use_match", [
    ("class", "all", False), ("view", "window", False), ("view", "all", False),
    ("class", "window", True), ("view", "window", True), ("view", "all", True),
])
def test_local_switches_match_loop_reference(window, positives, negatives, use_match):
    g = torch.Generator().manual_seed(5)
    labels = [0, 1, 0, 2, 1]  # class 2 has one sample: its anchors have the other view only ("class")
    a, b = (torch.randn(5, 3, 4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    match = tuple(torch.randn(5, 2, 4, 3, generator=g, dtype=torch.float64) for _ in range(2)) if use_match else None
    got = local_contrastive_loss(a, b, torch.tensor(labels), TAU, window, chunk=6, positives=positives,
                                 negatives=negatives, match=match)
    want = local_reference_switches(a, b, labels, window, positives, negatives, match)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_local_default_reading_is_the_switch_reference():
    """The two loop references agree on the paper's reading, so each checks the other."""
    g = torch.Generator().manual_seed(6)
    labels = [0, 1, 0, 1]
    a, b = (torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for window in (1, 3):
        assert local_reference_switches(a, b, labels, window, "class", "window") == pytest.approx(
            local_reference(a, b, labels, window), rel=1e-12)


def test_local_view_positives_ignore_other_same_class_samples():
    """One class only: with "view" positives the sibling view is the whole denominator, so every term is
    log 1 = 0 whatever the features; with "class" positives the other samples compete and the loss is not 0."""
    g = torch.Generator().manual_seed(7)
    a, b = (torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    labels = torch.tensor([0, 0, 0])
    assert local_contrastive_loss(a, b, labels, TAU, 1, positives="view").item() == pytest.approx(0, abs=1e-12)
    assert local_contrastive_loss(a, b, labels, TAU, 1, positives="class").item() > 0.1
    # window "full": per anchor position, logsumexp over the sibling's positions minus their maximum
    u = F.normalize(torch.stack([a, b], 1), dim=2).flatten(3)  # (3, 2, C, 4)
    s = torch.einsum("ncp,ncq->npq", u[:, 0], u[:, 1]) / TAU  # anchor view 0 against view 1
    t = torch.einsum("ncp,ncq->npq", u[:, 1], u[:, 0]) / TAU
    by_hand = torch.cat([(x.logsumexp(-1) - x.amax(-1)).flatten() for x in (s, t)]).mean()
    got = local_contrastive_loss(a, b, labels, TAU, "full", positives="view")
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-10)


def test_local_match_gradient_only_through_projected_features():
    a = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    ma = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    mb = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    local_contrastive_loss(a, b, torch.tensor([0, 1, 0, 1]), TAU, "full", positives="view", match=(ma, mb)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and ma.grad is None and mb.grad is None


def test_local_rejects_bad_switches():
    a = torch.randn(2, 3, 2, 2)
    with pytest.raises(ValueError, match="positives"):
        local_contrastive_loss(a, a, torch.tensor([0, 1]), positives="instance")
    with pytest.raises(ValueError, match="match maps"):
        local_contrastive_loss(a, a, torch.tensor([0, 1]), match=(torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)))
