"""Ground-truth regions for AUPRO: 8-connected components of a mask, each pixel weighted 1 / region size."""

from __future__ import annotations

import cv2
import numpy as np


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat indices of region pixels, their weights 1/size, number of regions) of a 2-D bool mask.

    Summing the weights of the pixels above a threshold gives the sum over regions of the
    fraction of the region above it (the PRO numerator).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    return where, 1.0 / areas[flat[where]], count - 1
