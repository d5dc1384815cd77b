"""INT8 calibration feeds the graph batches of the shape it takes: at most CALIBRATION_BATCH images for a dynamic
batch, exactly the fixed batch otherwise (a fixed-batch INT8 export once failed on its last, short batch)."""

from __future__ import annotations

import numpy as np

from pipelines.deploy.precision import CALIBRATION_BATCH, calibration_batches


def images(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)  # image k is all k


def firsts(batches: list[np.ndarray]) -> list[list[int]]:
    return [b[:, 0, 0, 0].tolist() for b in batches]


def test_a_fixed_batch_gets_full_batches_filled_from_the_start() -> None:
    assert firsts(calibration_batches(images(6), 4)) == [[0, 1, 2, 3], [4, 5, 0, 1]]
    assert firsts(calibration_batches(images(3), 4)) == [[0, 1, 2, 0]]
    assert firsts(calibration_batches(images(8), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(b.shape == (4, 2, 2, 3) for b in calibration_batches(images(6), 4))


def test_a_dynamic_batch_gets_every_image_once() -> None:
    n = CALIBRATION_BATCH + 3
    assert firsts(calibration_batches(images(n), None)) == [list(range(CALIBRATION_BATCH)),
                                                            list(range(CALIBRATION_BATCH, n))]
