"""One raw sample of a shard (``__key__`` plus member bytes, as ``shard_format.reader`` yields it) decoded."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from shard_format.errors import ShardError, check_not_refused
from shard_format.image_header import ImageRefused, check_image_header
from shard_format.reader import UNREAD_KEY
from shard_format.schema import (
    CLASS_EXTENSION,
    IMAGE_EXTENSIONS,
    MASK_EXTENSION,
    META_EXTENSION,
    RecordMeta,
    SchemaError,
    make_key,
    validate_meta,
)


@dataclass(frozen=True)
class Record:
    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) bool; None when the sample has no pixel ground truth
    meta: RecordMeta


def _check_header(data: bytes, where: str, what: str) -> None:
    """Refuse an image whose header is unknown or claims more pixels than the limit, before decoding it."""
    try:
        check_image_header(data, what)
    except ImageRefused as err:
        raise ImageRefused(f"{where}: {err}") from None


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB; the header is checked first (``shard_format.image_header``)."""
    _check_header(data, where, "image")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise ShardError(f"{where}: image does not decode")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """0/255 PNG -> (H, W) bool; the header is checked first."""
    _check_header(data, where, "mask")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise ShardError(f"{where}: mask does not decode")
    return array >= 128


def structure_problems(where: str, key: str, members: Mapping[str, Any], meta: RecordMeta, split: str,
                       unread: Sequence[str] = ()) -> list[str]:
    """What a record whose json parsed may not be (verify lists these, the exactly-once reader refuses them):
    a key that does not match its json, a record of another split than its shard's, members other than one
    image (png|jpg), json, cls and an optional mask (``unread``: members the reader noted but did not read)."""
    problems = []
    prefix = make_key(meta.dataset, meta.class_name, meta.split, meta.defect, "x").rsplit("/", 1)[0] + "/"
    if not key.startswith(prefix):
        problems.append(f"{where}: key does not match its json (expected prefix {prefix})")
    if meta.split != split:
        problems.append(f"{where}: split {meta.split!r} in a {split} shard")
    present = [ext for ext in members if not ext.startswith("__")]
    images = [ext for ext in IMAGE_EXTENSIONS if ext in present]
    unknown = set(present) - set(IMAGE_EXTENSIONS) - {MASK_EXTENSION, META_EXTENSION, CLASS_EXTENSION}
    if len(images) != 1 or unknown or unread:
        problems.append(f"{where}: members {sorted(set(present) | set(unread))}: expected one image (png|jpg), "
                        f"json, cls and an optional {MASK_EXTENSION}")
    return problems


def decode_record(sample: Mapping[str, Any], split: str | None = None) -> Record:
    """A raw sample (``__key__`` plus member bytes) -> ``Record``; ShardError when broken. With ``split`` (the
    split of the shard it came from), a record that ``structure_problems`` refuses is broken too."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')}:{key}"
    check_not_refused(sample)
    if META_EXTENSION not in sample:
        raise ShardError(f"{where}: sample has no {META_EXTENSION} member")
    try:
        meta = validate_meta(json.loads(sample[META_EXTENSION]), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{where}: json member does not parse ({err})") from None
    except SchemaError as err:
        raise ShardError(str(err)) from None
    if split is not None:
        problems = structure_problems(where, key, sample, meta, split, sample.get(UNREAD_KEY, ()))
        if problems:
            raise ShardError(problems[0])
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ShardError(f"{where}: sample has no image member ({'/'.join(IMAGE_EXTENSIONS)})")
    image = decode_image(sample[ext], where)
    mask = decode_mask(sample[MASK_EXTENSION], where) if MASK_EXTENSION in sample else None
    if mask is not None and mask.shape != image.shape[:2]:
        raise ShardError(f"{where}: mask {mask.shape} and image {image.shape[:2]} differ in size")
    return Record(key, image, mask, meta)
