"""Image and mask preprocessing shared by training, evaluation and prediction (DESIGN.md section 2).

Input: resize to the model size, ImageNet mean/std. Masks are resized the same way and binarised
at 0.5 (binarising at > 0 after resizing would enlarge the defects).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch

from ccl.data.image_ops import IMAGENET_MEAN, IMAGENET_STD, normalize_array, resize_image


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet-normalised."""
    return torch.from_numpy(normalize_array(image))


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) uint8 RGB, for overlays."""
    mean = torch.tensor(IMAGENET_MEAN, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=tensor.device).view(3, 1, 1)
    image = (tensor.detach().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return image.permute(1, 2, 0).cpu().numpy()


# ---------------------------------------------------------------- training views
#
# The views stay uint8 HxWx3 in the loader workers (4x fewer bytes through the worker queues than
# float32); ``normalize_batch`` turns a whole batch into the model input on the training device.


# Named augmented views (every ``augment_view`` keyword); a config names one and may override its fields.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    # The first release's view: the paper's list plus a random crop and grayscale.
    "first-release": dict(crop_scale=(0.7, 1.0), hflip=0.5, vflip=0.0, rotation=15.0, brightness=0.3, contrast=0.3,
                    saturation=0.3, hue=0.05, jitter_p=0.8, grayscale=0.2, blur_p=0.0, blur_sigma=(0.1, 2.0)),
    # The paper's list (Section 4.1): resizing, flipping, colour jittering and rotation; no crop, no grayscale.
    "paper": dict(crop_scale=(1.0, 1.0), hflip=0.5, vflip=0.0, rotation=15.0, brightness=0.3, contrast=0.3,
                  saturation=0.3, hue=0.05, jitter_p=0.8, grayscale=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0)),
    # The official CCL code's: resized crop (0.8-1), both flips, jitter 0.4/0.4/0.4/0.1, grayscale, blur, rotation.
    "official": dict(crop_scale=(0.8, 1.0), hflip=0.5, vflip=0.5, rotation=15.0, brightness=0.4, contrast=0.4,
                     saturation=0.4, hue=0.1, jitter_p=1.0, grayscale=0.2, blur_p=1.0, blur_sigma=(0.1, 2.0)),
    # Geometry only: colour is never changed, so a colour defect stays unlike every normal view.
    "geometric": dict(crop_scale=(0.7, 1.0), hflip=0.5, vflip=0.0, rotation=15.0, brightness=0.0, contrast=0.0,
                      saturation=0.0, hue=0.0, jitter_p=0.0, grayscale=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0)),
}


def augment_params(preset: str, **overrides: Any) -> dict[str, Any]:
    """The ``augment_view`` keywords of a preset, with the given (non-None) fields replaced."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {sorted(AUGMENT_PRESETS)}")
    return {**AUGMENT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}


def train_views(image: np.ndarray, size: int, rng: np.random.Generator,
                **augment: object) -> tuple[np.ndarray, np.ndarray]:
    """(anchor, augmented) uint8 (size, size, 3) views of one training image.

    The anchor is the evaluation resize; the augmented view is cut from the resized image (cheap
    whatever the source resolution) by ``augment_view`` with the ``AugmentConfig`` fields as keywords.
    """
    base = resize_image(image, size)
    return base, augment_view(base, rng, **augment)  # type: ignore[arg-type]


def augment_view(
    image: np.ndarray,
    rng: np.random.Generator,
    crop_scale: tuple[float, float] = (0.7, 1.0),
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotation: float = 15.0,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.05,
    jitter_p: float = 0.8,
    grayscale: float = 0.2,
    blur_p: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> np.ndarray:
    """Random resized crop + flips + rotation (one affine warp), then colour jitter and grayscale (one
    colour matrix), then Gaussian blur; same size out. Each pass is a single OpenCV call: the loader's
    cost per view."""
    out = cv2.warpAffine(image, _crop_flip_rotate_matrix(image.shape[:2], rng, crop_scale, hflip, vflip, rotation),
                         (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    jitter = rng.random() < jitter_p
    gray = rng.random() < grayscale
    if jitter or gray:
        out = _recolour(out, rng, jitter, gray, brightness, contrast, saturation, hue)
    if blur_p > 0 and rng.random() < blur_p:
        sigma = rng.uniform(*blur_sigma)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    return out


def _recolour(out: np.ndarray, rng: np.random.Generator, jitter: bool, gray: bool, brightness: float,
              contrast: float, saturation: float, hue: float) -> np.ndarray:
    """Colour jitter and / or grayscale as one 3x4 colour matrix."""
    matrix = np.hstack([np.eye(3), np.zeros((3, 1))])
    if jitter:
        matrix = color_jitter_matrix(np.array(cv2.mean(out)[:3]), rng, brightness, contrast, saturation, hue)
    if gray:
        matrix = _GRAY @ matrix
    return cv2.transform(out, matrix)


def _crop_flip_rotate_matrix(shape: tuple[int, int], rng: np.random.Generator, crop_scale: tuple[float, float],
                             hflip: float, vflip: float, rotation: float) -> np.ndarray:
    """2x3 source -> output matrix: a crop of area fraction ``crop_scale`` (aspect kept: defects must not be
    squashed) scaled to the full size, flipped and rotated about the centre. Pixel i sits at coordinate i."""
    h, w = shape
    side = math.sqrt(rng.uniform(*crop_scale))
    cy = rng.uniform(side * h / 2, h - side * h / 2) - 0.5
    cx = rng.uniform(side * w / 2, w - side * w / 2) - 0.5
    angle = math.radians(rng.uniform(-rotation, rotation)) if rotation > 0 else 0.0
    sx = (-1.0 if rng.random() < hflip else 1.0) / side
    sy = (-1.0 if rng.random() < vflip else 1.0) / side
    a, b = math.cos(angle), math.sin(angle)
    lin = ((a * sx, b * sy), (-b * sx, a * sy))
    ox = (w - 1) / 2 - lin[0][0] * cx - lin[0][1] * cy
    oy = (h - 1) / 2 - lin[1][0] * cx - lin[1][1] * cy
    return np.array([[lin[0][0], lin[0][1], ox], [lin[1][0], lin[1][1], oy]])


_LUMA = np.array([[0.299, 0.587, 0.114]])
_GRAY = np.repeat(_LUMA, 3, axis=0)  # every channel <- the pixel's gray
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_jitter_matrix(mean_rgb: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                        saturation: float, hue: float) -> np.ndarray:
    """3x4 affine colour matrix of torchvision-style jitter (factors uniform in [1-x, 1+x], hue in [-x, x] turns).

    Brightness, contrast (towards the mean gray of the image), saturation (towards each pixel's gray) and hue
    (a rotation of the chroma plane in YIQ) are all affine in RGB, so they compose into one matrix applied
    by a single ``cv2.transform``; unlike torchvision the order is fixed and there is no clipping in between.
    """
    m, t = np.eye(3), np.zeros(3)
    if brightness > 0:
        f = rng.uniform(1 - brightness, 1 + brightness)
        m, t = f * m, f * t
    if contrast > 0:
        c = rng.uniform(1 - contrast, 1 + contrast)
        gray_mean = float(_LUMA[0] @ (m @ mean_rgb + t))
        m, t = c * m, c * t + (1 - c) * gray_mean
    if saturation > 0:
        s = rng.uniform(1 - saturation, 1 + saturation)
        sat = s * np.eye(3) + (1 - s) * _GRAY
        m, t = sat @ m, sat @ t
    if hue > 0:
        theta = rng.uniform(-hue, hue) * 2 * math.pi
        rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
        h = np.linalg.inv(_YIQ) @ rot @ _YIQ
        m, t = h @ m, h @ t
    return np.hstack([m, t[:, None]])


def to_uint8_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (B, 3, H, W) uint8 tensor, a channels-last view (no copy: the layout
    change happens for free in ``normalize_batch`` on the device)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def normalize_batch(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 (on any device) -> ImageNet-normalised float; same result as ``normalize`` per image."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float().div_(255.0) - mean) / std).to(dtype)
