"""One item -> its samples (decode, crop, resize, encode): the work the worker processes share."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass

import numpy as np

from ccl.data.image_ops import resize_image, resize_mask
from shard_format.schema import CLASS_EXTENSION, MASK_EXTENSION, META_EXTENSION, RecordMeta, make_key
from shard_tools import images
from shard_tools.errors import warn
from shard_tools.images import ImageError
from shard_tools.items import Item, Skip

_META_FIELDS = tuple(f.name for f in dataclasses.fields(RecordMeta))


@dataclass(frozen=True, slots=True)
class Sample:
    """One record: its key, its tar members in a fixed order, and its metadata."""

    key: str
    members: tuple[tuple[str, bytes], ...]
    meta: RecordMeta

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data in self.members)


def process_item(item: Item, image_size: int | None = None) -> list[Sample] | Skip:
    """The samples of one source image, or the reason it has to be skipped."""
    try:
        return _samples(item, image_size)
    except ImageError as exc:
        return Skip(item.source, str(exc))
    except OSError as exc:
        return Skip(item.source, f"unreadable: {exc.strerror or exc}")


def process_batch(batch: list[Item], image_size: int | None) -> list[list[Sample] | Skip]:
    """A worker task: several items at once to amortise inter-process traffic."""
    return [process_item(item, image_size) for item in batch]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _samples(item: Item, image_size: int | None) -> list[Sample]:
    data = _read(item.path)
    fmt, width, height = images.sniff(data)
    mask = _mask(item, width, height)
    label = 1 if item.label == 1 else 0
    if item.tiles == 1 and image_size is None and fmt in ("png", "jpg"):
        # No pixel work asked: keep the original bytes untouched.
        return [_sample(item, item.view, label, (fmt, data), mask, width, height)]
    array = images.decode(data)
    out = []
    for view, x0, x1 in _tiles(item, width):
        crop = array[:, x0:x1]
        crop_mask = None if mask is None else mask[:, x0:x1]
        # A view whose mask crop is empty shows no defect: the reference evaluation labels it normal.
        view_label = int(crop_mask.any()) if (crop_mask is not None and item.tiles > 1) else label
        if image_size is not None:
            crop = resize_image(crop, image_size)
            crop_mask = None if crop_mask is None else resize_mask(crop_mask, image_size)
        encoded = ("jpg", images.encode_jpg(crop)) if fmt == "jpg" and image_size else ("png", images.encode_png(crop))
        out.append(_sample(item, view, view_label, encoded, crop_mask, width, height))
    return out


def _tiles(item: Item, width: int) -> list[tuple[str, int, int]]:
    if item.tiles == 1:
        return [(item.view, 0, width)]
    n = item.tiles
    return [(str(i), i * width // n, (i + 1) * width // n) for i in range(n)]


def _mask(item: Item, width: int, height: int) -> np.ndarray | None:
    """The binary mask at the image's size, None for normal or image-level samples."""
    if item.label != 1 or item.split == "train" or not (item.mask_path or item.polygons):
        return None
    try:
        if item.polygons:
            mask = polygons_mask(item.polygons, height, width)
        else:
            mask = images.binary_mask(_read(item.mask_path))
        if mask.shape != (height, width):
            raise ImageError(f"mask {item.mask_path or 'from annotations'} is {mask.shape[1]}x{mask.shape[0]}, "
                             f"image is {width}x{height}")
    except (ImageError, OSError) as exc:
        reason = str(exc) if isinstance(exc, ImageError) else f"mask {item.mask_path} unreadable: {exc.strerror or exc}"
        if not reason.startswith("mask"):
            reason = f"mask {item.mask_path}: {reason}"
        if item.mask_optional:
            warn(f"{item.source}: {reason}; kept as an image-level anomaly")
            return None
        raise ImageError(reason) from None
    return mask


def polygons_mask(segmentations: tuple, height: int, width: int) -> np.ndarray:
    """Union of COCO segmentations (polygon lists, uncompressed or compressed RLE), crowd included."""
    from pycocotools import mask as mask_utils  # only COCO-AD needs it

    mask = np.zeros((height, width), dtype=bool)
    for seg in segmentations:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, *seg["size"])
        else:
            rle = seg
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice: noise, not a problem
            warnings.simplefilter("ignore", DeprecationWarning)
            part = mask_utils.decode(rle).astype(bool)
        if part.shape != mask.shape:
            raise ImageError(f"mask from annotations is {part.shape[1]}x{part.shape[0]}, image is {width}x{height}")
        mask |= part
    return mask


def _sample(item: Item, view: str, label: int, image: tuple[str, bytes], mask: np.ndarray | None,
            width: int, height: int) -> Sample:
    meta = RecordMeta(dataset=item.dataset, class_name=item.class_name, class_id=item.class_id, group=item.group,
                      split=item.split, label=label, defect=item.defect, view=view, source=item.source,
                      width=width, height=height)
    members = [image]
    if mask is not None and label == 1:
        members.append((MASK_EXTENSION, images.encode_mask(mask)))
    # Same dict as meta.to_json(), without dataclasses.asdict's deep copy (a hot path).
    fields = {name: getattr(meta, name) for name in _META_FIELDS}
    members.append((META_EXTENSION, json.dumps(fields, sort_keys=True).encode()))
    members.append((CLASS_EXTENSION, str(item.class_id).encode()))
    key = make_key(item.dataset, item.class_name, item.split, item.defect, item.stem, view)
    return Sample(key, tuple(members), meta)
