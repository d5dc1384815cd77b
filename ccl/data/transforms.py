"""Image and mask preprocessing shared by training, evaluation and prediction (DESIGN.md section 2).

Input: resize to the model size, ImageNet mean/std. Masks are resized the same way and binarised
at 0.5 (binarising at > 0 after resizing would enlarge the defects).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8; area interpolation when shrinking."""
    if image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool, resized as a float image and binarised at 0.5."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return resized >= 0.5


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet-normalised."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) uint8 RGB, for overlays."""
    mean = torch.tensor(IMAGENET_MEAN, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=tensor.device).view(3, 1, 1)
    image = (tensor.detach().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return image.permute(1, 2, 0).cpu().numpy()


def eval_view(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The evaluation input: resized, normalised image (3, S, S) and resized bool mask (S, S) or None."""
    tensor = normalize(resize_image(image, size))
    mask_tensor = torch.from_numpy(resize_mask(mask, size)) if mask is not None else None
    return tensor, mask_tensor


# ---------------------------------------------------------------- training views
#
# The views stay uint8 HxWx3 in the loader workers (4x fewer bytes through the worker queues than
# float32); ``normalize_batch`` turns a whole batch into the model input on the training device.


def train_views(image: np.ndarray, size: int, rng: np.random.Generator, **augment: object) -> tuple[np.ndarray, np.ndarray]:
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
) -> np.ndarray:
    """Random resized crop + flips + rotation (one affine warp), colour jitter, grayscale; same size out."""
    out = cv2.warpAffine(image, _crop_flip_rotate_matrix(image.shape[:2], rng, crop_scale, hflip, vflip, rotation),
                         (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < jitter_p:
        out = color_jitter(out, rng, brightness, contrast, saturation, hue)
    if rng.random() < grayscale:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return out


def _crop_flip_rotate_matrix(shape: tuple[int, int], rng: np.random.Generator, crop_scale: tuple[float, float],
                             hflip: float, vflip: float, rotation: float) -> np.ndarray:
    """2x3 matrix mapping output pixels' source: a square crop of area fraction ``crop_scale``, flipped and rotated."""
    h, w = shape
    side = np.sqrt(rng.uniform(*crop_scale))  # the crop keeps the aspect ratio: defects must not be squashed
    ch, cw = side * h, side * w
    cy = rng.uniform(ch / 2, h - ch / 2) - 0.5  # pixel-centre coordinates: pixel i sits at i
    cx = rng.uniform(cw / 2, w - cw / 2) - 0.5
    angle = rng.uniform(-rotation, rotation) if rotation > 0 else 0.0
    sx = -1.0 if rng.random() < hflip else 1.0
    sy = -1.0 if rng.random() < vflip else 1.0
    # source -> output: centre the crop, scale by 1/side, flip, rotate, move to the output centre.
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    lin = rot @ np.diag([sx / side, sy / side])
    offset = np.array([(w - 1) / 2, (h - 1) / 2]) - lin @ np.array([cx, cy])
    return np.hstack([lin, offset[:, None]]).astype(np.float64)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float) -> np.ndarray:
    """torchvision-style jitter on uint8 RGB with cv2 (factors uniform in [1-x, 1+x], hue shift in [-x, x])."""
    out = image
    if brightness > 0:
        out = cv2.convertScaleAbs(out, alpha=rng.uniform(1 - brightness, 1 + brightness))
    if contrast > 0:
        c = rng.uniform(1 - contrast, 1 + contrast)
        mean = float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
        out = cv2.convertScaleAbs(out, alpha=c, beta=mean * (1 - c))
    if saturation > 0:
        s = rng.uniform(1 - saturation, 1 + saturation)
        gray = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, s, gray, 1 - s, 0.0)
    if hue > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        shift = int(round(rng.uniform(-hue, hue) * 180))  # OpenCV's 8-bit hue spans 0..179
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def to_uint8_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (B, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def normalize_batch(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 (on any device) -> ImageNet-normalised float; same result as ``normalize`` per image."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float().div_(255.0) - mean) / std).to(dtype)
