"""Training views: the affine crop/flip/rotation, colour jitter and batch normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccl.data.transforms import augment_view, normalize, normalize_batch, resize_image, to_uint8_tensor, train_views

NONE = dict(crop_scale=(1.0, 1.0), hflip=0.0, vflip=0.0, rotation=0.0, brightness=0.0, contrast=0.0,
            saturation=0.0, hue=0.0, jitter_p=0.0, grayscale=0.0)


def _image(size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_no_augmentation_is_the_identity() -> None:
    image = _image()
    assert np.array_equal(augment_view(image, np.random.default_rng(1), **NONE), image)


def test_flips_match_numpy() -> None:
    image = _image()
    assert np.array_equal(augment_view(image, np.random.default_rng(1), **{**NONE, "hflip": 1.0}), image[:, ::-1])
    assert np.array_equal(augment_view(image, np.random.default_rng(1), **{**NONE, "vflip": 1.0}), image[::-1])


def test_crop_zooms_into_the_image() -> None:
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 4, y * 4, np.zeros_like(x)], -1).astype(np.uint8)  # a gradient: the position is the colour
    out = augment_view(image, np.random.default_rng(3), **{**NONE, "crop_scale": (0.25, 0.25)})
    span = int(out[:, :, 0].max()) - int(out[:, :, 0].min())
    assert 100 < span < 150  # half the width (side = sqrt(0.25)) stretched over the output: ~half the range


def test_grayscale_and_jitter_are_seeded() -> None:
    image = _image()
    gray = augment_view(image, np.random.default_rng(0), **{**NONE, "grayscale": 1.0})
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    kw = dict(crop_scale=(0.6, 1.0), rotation=20.0, jitter_p=1.0)
    a = augment_view(image, np.random.default_rng(5), **kw)
    b = augment_view(image, np.random.default_rng(5), **kw)
    c = augment_view(image, np.random.default_rng(6), **kw)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.shape == image.shape and a.dtype == np.uint8


def test_train_views_anchor_is_the_eval_resize_and_batch_normalisation_matches() -> None:
    image = _image(48)
    anchor, view = train_views(image, 32, np.random.default_rng(0))
    assert np.array_equal(anchor, resize_image(image, 32)) and view.shape == (32, 32, 3)
    batch = to_uint8_tensor([anchor, view])
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    assert torch.allclose(normalize_batch(batch)[0], normalize(anchor), atol=1e-6)


def test_colour_matrix_matches_the_direct_operations() -> None:
    """Brightness, contrast and saturation composed into one matrix equal the step-by-step formulas."""
    from ccl.data.transforms import color_jitter_matrix

    image = _image().astype(np.float64)
    rng = np.random.default_rng(4)
    matrix = color_jitter_matrix(image.reshape(-1, 3).mean(0), np.random.default_rng(4), 0.3, 0.3, 0.3, 0.0)
    b, c, s = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)
    luma = np.array([0.299, 0.587, 0.114])
    x = image * b
    x = c * x + (1 - c) * (x @ luma).mean()
    x = s * x + (1 - s) * (x @ luma)[..., None]
    assert np.allclose(image @ matrix[:, :3].T + matrix[:, 3], x)
    hue = color_jitter_matrix(np.zeros(3), np.random.default_rng(0), 0.0, 0.0, 0.0, 0.1)
    gray = np.array([[100.0, 100.0, 100.0]])
    assert np.allclose(gray @ hue[:, :3].T + hue[:, 3], gray, atol=1e-6)  # a hue turn leaves grays alone


def test_mask_shrinks_like_the_image_then_binarises_at_half() -> None:
    """Integer-factor shrink: area interpolation is the block mean, so the mask is the >= 0.5 block vote."""
    rng = np.random.default_rng(3)
    mask = rng.random((256, 256)) < 0.5
    mask[100:102, :] = True  # a thin scratch: 2 of every 4 rows in its blocks
    expected = mask.reshape(64, 4, 64, 4).mean(axis=(1, 3)) >= 0.5
    from ccl.data.image_ops import resize_mask

    assert np.array_equal(resize_mask(mask, 64), expected)


def test_a_defect_spread_over_resized_pixels_keeps_the_one_it_covers_most() -> None:
    """Shrinking 64 -> 16 averages 4x4 blocks: a defect spread over four blocks (1/16, 1/16, 1/16 and 3/16)
    binarises to nothing at 0.5; the block it covers most is kept (the builder's test has the 1-pixel case)."""
    from ccl.data.image_ops import resize_mask

    spread = np.zeros((64, 64), bool)
    spread[[3, 4, 4, 3], [3, 3, 4, 4]] = True  # one pixel in block (0, 0), one each in (1, 0), (1, 1), (0, 1)
    spread[5, 5] = spread[6, 6] = True  # block (1, 1): 3 of 16
    assert np.argwhere(resize_mask(spread, 16)).tolist() == [[1, 1]]


def test_presets_name_every_augment_keyword_and_overrides_win() -> None:
    import inspect

    from ccl.data.transforms import AUGMENT_PRESETS, augment_params

    keywords = set(inspect.signature(augment_view).parameters) - {"image", "rng"}
    for name, preset in AUGMENT_PRESETS.items():
        assert set(preset) == keywords, name
    paper = augment_params("paper")
    assert paper["crop_scale"] == (1.0, 1.0) and paper["grayscale"] == 0.0 and paper["rotation"] > 0
    assert augment_params("paper", hue=0.0, rotation=None)["hue"] == 0.0  # None keeps the preset's value
    assert augment_params("paper", rotation=None)["rotation"] == paper["rotation"]
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment_params("strong")


def test_geometric_preset_never_changes_colour_statistics() -> None:
    from ccl.data.transforms import augment_params

    image = np.full((32, 32, 3), (200, 40, 90), np.uint8)  # flat colour: geometry alone cannot change it
    for seed in range(5):
        out = augment_view(image, np.random.default_rng(seed), **augment_params("geometric"))
        assert np.array_equal(out, image)


def test_blur_is_a_gaussian_of_the_drawn_sigma() -> None:
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = augment_view(image, np.random.default_rng(4), **{**NONE, "blur_p": 1.0, "blur_sigma": (1.5, 1.5)})
    assert np.array_equal(out, cv2.GaussianBlur(image, (0, 0), sigmaX=1.5, borderType=cv2.BORDER_REFLECT_101))
