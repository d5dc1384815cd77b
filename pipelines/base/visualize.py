"""Heatmap overlays and metric curves (matplotlib Agg; nothing here needs a display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

CONTOUR_RGB = (0, 255, 0)


def _to_numpy(x: object) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(x)


def heat(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) scores -> (H, W, 3) uint8 RGB jet colours, scaled to [vmin, vmax] (default the map's range)."""
    amap = _to_numpy(amap).astype(np.float32)
    lo = float(amap.min()) if vmin is None else vmin
    hi = float(amap.max()) if vmax is None else vmax
    scaled = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def draw_contour(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A copy of ``image`` with the outline of the ground-truth mask drawn on it."""
    out = np.ascontiguousarray(image).copy()
    if mask is None:
        return out
    mask = _to_numpy(mask).astype(np.uint8)
    if mask.shape != out.shape[:2]:
        mask = cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, CONTOUR_RGB, 1)
    return out


def overlay(image_uint8: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
            vmin: float | None = None, vmax: float | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image blended with its anomaly map (resized to the image) and the mask outline."""
    image = np.ascontiguousarray(image_uint8, dtype=np.uint8)
    amap = _to_numpy(amap).astype(np.float32)
    if amap.shape != image.shape[:2]:
        amap = cv2.resize(amap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = cv2.addWeighted(image, 1 - alpha, heat(amap, vmin, vmax), alpha, 0.0)
    return draw_contour(blended, mask)


def panel(image_uint8: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
          vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Side by side: the image with the ground-truth outline, and the overlay."""
    left = draw_contour(image_uint8, mask)
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([left, gap, overlay(image_uint8, amap, mask, vmin, vmax)])


def save_png(path: str | Path, image_rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def plot_curves(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str,
                path: str | Path, fpr_limit: float = 0.3) -> Path:
    """One PNG: pixel ROC (left) and PRO up to ``fpr_limit`` (right), one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, pro_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, c in sorted(curves.items()):
        label = name.split("/", 1)[-1]
        if len(c["roc"][0]):
            roc_ax.plot(*c["roc"], lw=1, label=label)
        if len(c["pro"][0]):
            x, y = c["pro"]
            keep = x <= fpr_limit * 1.05
            pro_ax.plot(x[keep], y[keep], lw=1, label=label)
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(xlabel="FPR", ylabel="TPR", title=f"{title}: pixel ROC", xlim=(0, 1), ylim=(0, 1.01))
    pro_ax.axvline(fpr_limit, color="k", ls=":", lw=0.8)
    pro_ax.set(xlabel="FPR", ylabel="PRO", title=f"{title}: PRO", xlim=(0, fpr_limit * 1.05), ylim=(0, 1.01))
    if curves:
        roc_ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
