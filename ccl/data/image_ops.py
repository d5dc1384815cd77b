"""Image preprocessing in numpy / OpenCV only: what a deployed model needs without torch.

The resize and ImageNet constants of DESIGN.md section 2; ``ccl.data.transforms`` builds the
torch tensors of training and evaluation on these, and ``pipelines.deploy.runtime`` feeds exported models
with them, so both paths see the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolation(shape: tuple[int, ...], size: int) -> int:
    """The one resize rule of the project (training, evaluation, prediction, the shard builder): area
    interpolation when shrinking either side (no aliasing), bilinear when enlarging both."""
    return cv2.INTER_AREA if shape[0] > size or shape[1] > size else cv2.INTER_LINEAR


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=interpolation(image.shape, size))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool: resized the way the image is, as a float image, binarised at 0.5.

    A defect that covers less than half of every resized pixel would vanish and leave an anomalous
    sample with an empty mask: the resized pixel it covers most is kept instead. The builder and the
    evaluator resize with this one rule, so a test mask never loses its defect at either step.
    """
    if mask.shape == (size, size):
        return mask.astype(bool)
    area = cv2.resize(mask.astype(np.float32), (size, size), interpolation=interpolation(mask.shape, size))
    out = area >= 0.5
    if mask.any() and not out.any():
        out.flat[int(np.argmax(area))] = True
    return out


def normalize_array(images: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) float32, ImageNet-normalised."""
    x = np.asarray(images).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
