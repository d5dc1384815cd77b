"""Image bytes: cheap format/size/truncation checks, decoding and lossless encoding.

Resizing (``--image-size``, in shard_tools.process) uses ``ccl.data.image_ops``, the rule training and
evaluation resize with: area when shrinking, bilinear when enlarging, and a tiny defect's mask kept. (Until
the rule was shared, the builder used area interpolation also to enlarge: shards built with ``--image-size``
larger than a source image differ from the earlier ones; shrinking builds and builds without resize are
unchanged.)
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from shard_format.image_header import jpeg_size, pixel_problem, png_size

# Parallelism comes from worker processes; one OpenCV thread each keeps 1-vs-N scaling honest.
cv2.setNumThreads(1)

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
PNG_COMPRESSION = 3  # zlib level: a fair speed / size balance for shards that are read many times
JPEG_QUALITY = 95


class ImageError(ValueError):
    """An image or mask that cannot be used; the message is the reason recorded in the manifest."""


def _header(data: bytes) -> tuple[str, int, int]:
    """Format and size without decoding: parsed here for PNG and JPEG (fast), by PIL otherwise."""
    size = png_size(data) if data[:1] == b"\x89" else jpeg_size(data) if data[:2] == b"\xff\xd8" else None
    if size is not None and min(size) > 0:
        return ("png" if data[:1] == b"\x89" else "jpg"), size[0], size[1]
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = (im.format or "").lower(), im.size
    except Exception as exc:  # PIL raises many types for garbage; all mean "not an image"
        raise ImageError(f"not a readable image ({exc.__class__.__name__})") from None
    return {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt), width, height


def sniff(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header, with a check that the file is not cut short and that it
    claims no more pixels than the limit (``shard_format.image_header``: nothing over it is ever decoded)."""
    if not data:
        raise ImageError("empty file")
    fmt, width, height = _header(data)
    problem = pixel_problem(width, height)
    if problem is not None:
        raise ImageError(problem)
    if fmt == "png" and not data.rstrip(b"\0").endswith(_PNG_END):
        raise ImageError("truncated PNG (no IEND chunk at the end)")
    if fmt == "jpg" and _JPEG_EOI not in data[-64:]:
        raise ImageError("truncated JPEG (no end-of-image marker)")
    return fmt, width, height


def decode(data: bytes, what: str = "image") -> np.ndarray:
    """Decode to uint8/uint16 HxW or HxWxC (BGR), alpha dropped."""
    sniff(data)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageError(f"{what} cannot be decoded")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return array


def binary_mask(data: bytes) -> np.ndarray:
    """A mask file as bool HxW: any non-zero value is defect (VisA stores defect ids 1..N)."""
    array = decode(data, "mask")
    return array.any(axis=2) if array.ndim == 3 else array != 0


def encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()


def encode_jpg(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """bool HxW -> 0/255 single-channel PNG."""
    return encode_png(mask.astype(np.uint8) * 255)
