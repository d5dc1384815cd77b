"""Prediction on a folder (or glob) of images: one anomaly score per image, scores.csv, heatmaps.

    summary = predict(score, image_size, "photos/", "predictions/", threshold=0.42)

``score`` maps a (B, S, S, 3) uint8 RGB batch to anomaly maps (B, S, S) and image scores (B,):
the torch model through ``InferenceGraph.run_numpy`` (``--checkpoint``) or an exported graph
through ``pipelines.deploy.runtime`` (``--model``). Everything else (reading, resizing, batching, the
decision, scores.csv, skipped.csv, heatmaps) is this one module, in numpy and OpenCV only, so
both paths write the same files and the exported path runs without torch.

No class label is needed: the model scores any image. ``threshold="auto"`` uses the F1-optimal
image threshold that the last evaluation stored in info.json. Unreadable files, and images whose header
claims more pixels than the limit (``shard_format.image_header``; never decoded), are listed in skipped.csv
(and printed) while the others are scored.

Decisions fail closed: a threshold that is not a finite number (``nan``, ``inf``, ``1e999``, in info.json
too) and a model that gives a non-finite score or map (NaN weights) stop the run with an InputError
instead of marking every image "no".
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ccl.data.image_ops import resize_image
from pipelines.base.exits import InputError
from pipelines.base.visualize import overlay, save_png
from shard_format.atomic import check_writable, set_aside, write_atomic
from shard_format.image_header import ImageRefused, check_image_header

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Larger files are skipped unread: 100 megapixels of uncompressed 32-bit BMP are 400 MB.
MAX_IMAGE_FILE_BYTES = 1 << 30

Score = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def list_inputs(spec: str | Path, out: str | Path | None = None) -> tuple[list[Path], Path]:
    """Image files of a directory (recursive) or a glob pattern, sorted, and the root they are relative to;
    nothing under ``out`` (an output folder inside the input would score its own heatmaps)."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        root = path
    else:
        # glob's ** follows symlinked folders: a link loop names one image many times, so keep each file once
        found = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        seen: set[Path] = set()
        files = [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else path.parent
    if out is not None:
        outside = Path(out).resolve()
        files = [p for p in files if not p.resolve().is_relative_to(outside)]
    if not files:
        raise FileNotFoundError(f"no images found at {spec} (a directory of images or a glob pattern)")
    return files, root


def resolve_threshold(threshold: str | float | None, info_dir: str | Path, hint: str = "") -> float | None:
    """A number, None (no decision), or "auto": the F1-optimal image threshold in ``info_dir/info.json``.

    Only a finite number decides: NaN compares false with every score (every image "no") and inf marks
    none, so both are refused, from the command line and from info.json alike."""
    if threshold is None or threshold == "none":
        return None
    if threshold != "auto":
        try:
            value = float(threshold)
        except ValueError:
            raise InputError(f"--threshold must be 'auto', 'none' or a number, got {threshold!r}") from None
        if not math.isfinite(value):
            raise InputError(f"--threshold {threshold}: not a finite number (it would decide nothing)")
        return value
    info = Path(info_dir) / "info.json"
    try:
        doc = json.loads(info.read_text()) if info.is_file() else {}
    except ValueError as err:
        raise InputError(f"{info}: not readable JSON ({err})") from None
    value = doc.get("image_threshold") if isinstance(doc, dict) else None
    if value is None:
        raise InputError(f"{info} holds no image_threshold: "
                         f"{hint or 'evaluate this export first (launch/evaluate.py --checkpoint ... --shards ...)'}"
                         " or pass --threshold VALUE")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{info}: image_threshold {value!r} is not a finite number; evaluate the export again "
                         "or pass --threshold VALUE")
    return float(value)


def read_rgb(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray | None, str]:
    """(H, W, 3) uint8 RGB and "", or None and why the file is skipped. The header is read first: an image
    claiming more than ``max_pixels`` (default: ``shard_format.image_header.max_pixels()``) is not decoded."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            return None, f"file of {size} bytes is over the {MAX_IMAGE_FILE_BYTES}-byte limit for an image"
        data = path.read_bytes()
    except OSError as err:
        return None, f"not readable ({err.strerror or err})"
    try:
        check_image_header(data, limit=max_pixels)
    except ImageRefused as err:
        return None, str(err)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        return None, "not a readable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), ""


def _batches(files: list[Path], size: int, image_size: int, skipped: list[tuple[str, str]],
             max_pixels: int | None = None) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Readable images in batches of ``size``: (paths, (B, S, S, 3) uint8); unreadable ones go to ``skipped``."""
    paths, images = [], []
    for i, path in enumerate(files):
        image, reason = read_rgb(path, max_pixels)
        if image is None:
            print(f"warning: skipped {path}: {reason}", file=sys.stderr, flush=True)
            skipped.append((str(path), reason))
        else:
            paths.append(path)
            images.append(resize_image(image, image_size))
        if paths and (len(paths) == size or i == len(files) - 1):
            yield paths, np.stack(images)
            paths, images = [], []


def check_batch_size(batch_size: int) -> int:
    """``--batch-size``: a whole number >= 1 (0 or less would put every image in one batch)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def check_finite(paths: Sequence[Path], maps: np.ndarray, scores: np.ndarray) -> None:
    """A non-finite score or map (NaN or inf weights, an overflow) decides nothing: InputError naming the image."""
    bad = [i for i in range(len(paths)) if not (np.isfinite(scores[i]) and np.isfinite(maps[i]).all())]
    if bad:
        raise InputError(f"the model gives a non-finite score or anomaly map ({scores[bad[0]]}) for {paths[bad[0]]}"
                         f" ({len(bad)} of {len(paths)} in its batch): NaN or inf weights? Refusing to decide; "
                         "nothing was written to scores.csv")


def predict(score: Score, image_size: int, spec: str | Path, out_dir: str | Path, threshold: float | None = None,
            vis: bool = True, batch_size: int = 16, max_pixels: int | None = None) -> dict[str, Any]:
    """Score every image of ``spec``; write scores.csv, skipped.csv and heatmaps/ under ``out_dir``."""
    check_batch_size(batch_size)
    if threshold is not None and not math.isfinite(threshold):
        raise InputError(f"threshold {threshold}: not a finite number (it would decide nothing)")
    files, root = list_inputs(spec, out_dir)
    out = Path(out_dir)
    check_writable(out, "--out")  # before any image is scored
    previous = set_aside(out)  # one run's outputs per folder: no stale skipped.csv, heatmaps or scores.csv
    if previous is not None:
        print(f"warning: the outputs of an earlier run in {out} were moved into {previous}", file=sys.stderr,
              flush=True)
    rows: list[tuple[str, float, str]] = []
    skipped: list[tuple[str, str]] = []
    vmax = 2 * threshold if threshold else None  # one colour scale for all images (threshold mid-scale)
    for paths, images in _batches(files, batch_size, image_size, skipped, max_pixels):
        maps, scores = score(images)
        check_finite(paths, np.asarray(maps), np.asarray(scores))
        for path, image, amap, value in zip(paths, images, maps, scores.tolist()):
            decision = "" if threshold is None else ("yes" if value >= threshold else "no")
            rows.append((str(path), value, decision))
            if vis:
                heatmap = overlay(image, amap, None, 0.0 if vmax else None, vmax)
                save_png(heatmap_path(out, path.relative_to(root)), heatmap)
    if skipped:
        write_csv(out / "skipped.csv", ["path", "reason"], [(cell_text(p), cell_text(r)) for p, r in skipped])
    # last: a scores.csv means a finished run (an interrupted one leaves none, the earlier one is set aside)
    write_csv(out / "scores.csv", ["path", "score", "anomalous"],
              [(cell_text(p), f"{s:.6g}", d) for p, s, d in rows])
    return {"scored": len(rows), "anomalous": sum(d == "yes" for _, _, d in rows), "skipped": skipped,
            "threshold": threshold}


def heatmap_path(out: Path, rel: Path) -> Path:
    """``heatmaps/<rel>.png`` keeping the input's suffix: ``a.png`` and ``a.jpg`` get a heatmap each."""
    return out / "heatmaps" / rel.with_name(rel.name + ".png")


def cell_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting with = + - @ (or a tab or CR) would be read as a
    formula (a file named ``=HYPERLINK(...).png``), so it gets a leading apostrophe. Numbers are not passed here."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Written whole (``write_atomic``): a reader never sees half a table."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
