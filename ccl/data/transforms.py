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
