"""Assertions shared by the shard tool tests: a build against what its fixture wrote."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from shard_tools.verify import verify_build
from tests.shard_tools.fixtures import Expected, read_build


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _mask_matches(got: np.ndarray, want: np.ndarray, exact: bool) -> bool:
    on = got == 255
    if exact:
        return bool(np.array_equal(on, want))
    inner = cv2.erode(want.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    outer = cv2.dilate(want.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return bool(on[inner].all() and not on[~outer].any())


def check_build(directory: Path, dataset: str, exp: Expected, image_size: int | None = None) -> dict:
    """Every expected sample present with the right label, class, split, view, mask and pixels; the
    expected skips recorded; nothing else; verify finds no problem. Returns the samples read."""
    got = read_build(directory)
    manifest = manifest_of(directory)
    assert set(got) == set(exp.samples), (sorted(set(got) ^ set(exp.samples)))
    for key, want in exp.samples.items():
        s = got[key]
        assert (s["dataset"], s["class_name"], s["label"], s["defect"]) == \
               (dataset, want.class_name, want.label, want.defect), key
        assert s["group"] == (want.group or want.class_name), key
        assert s["split"] in (("train", "val") if want.split == "train" else ("test",)), key
        assert s["class_id"] == manifest["classes"][f"{dataset}/{want.class_name}"] == int(s["cls_text"])
        assert f"/{s['split']}/" in s["__key__"] and s["__key__"].startswith(f"{dataset}/"), s["__key__"]
        if want.mask is None:
            assert s["mask"] is None, key
        else:
            assert s["mask"] is not None and s["mask"].ndim == 2, key
            assert set(np.unique(s["mask"]).tolist()) <= {0, 255}
            assert s["mask"].shape == s["image"].shape[:2]
            if image_size is None:
                assert _mask_matches(s["mask"], want.mask, want.exact_mask), key
        if image_size is not None:
            assert s["image"].shape[:2] == (image_size, image_size), key
        elif want.image is not None:
            assert np.array_equal(s["image"], want.image), key
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == set(exp.skipped), skipped
    for source, word in exp.skipped.items():
        assert word in skipped[source], (source, skipped[source])
    assert verify_build(directory) == []
    return got
