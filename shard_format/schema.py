"""The shard record contract (DESIGN.md section 4): the single source of truth.

A shard is a WebDataset tar; one sample per image (per view for multi-view
sources). Members of a sample share the key ``{dataset}/{class}/{split}/{defect}/{stem}[_{view}]``:

    <key>.png | <key>.jpg   the image (original bytes, or re-encoded when resized)
    <key>.mask.png          binary 0/255 mask, same size as the image; anomalous test samples only
    <key>.json              the metadata below (``RecordMeta``)
    <key>.cls               class_id as text

Every build also writes ``manifest.json`` (see ``MANIFEST_*`` below).

Shards and manifests may come from someone else: their content is data, never a command or a path.
Names that end up in file paths (``dataset``, ``class_name``, ``group``; manifest shard names) are
checked here, and every member has a size cap by kind, checked before it is read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = ("png", "jpg")
MASK_EXTENSION = "mask.png"
META_EXTENSION = "json"
CLASS_EXTENSION = "cls"
NORMAL_DEFECT = "good"

MANIFEST_NAME = "manifest.json"
PSEUDO_CLASSES_NAME = "pseudo_classes.json"  # the pseudo-label sidecar beside a build (shard_tools/pseudo_classes.py)
SHARD_KEYS = ("name", "split", "samples", "bytes", "sha256")  # one shard's entry in the manifest
BUILDER_VERSION = "1"
# Manifest keys: {"builder_version", "dataset", "args", "classes": {"dataset/class": id},
#  "counts": {split: {class_name: {"normal": n, "anomalous": n}}},
#  "shards": [{"name", "split", "samples", "bytes", "sha256"}],
#  "skipped": [{"source", "reason"}]}

_SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
_KEY_PART_RE = re.compile(r"[^A-Za-z0-9_\-]+")
_UNSAFE_NAME_RE = re.compile(r"[/\\\x00-\x1f\x7f]")
PATH_NAME_FIELDS = ("dataset", "class_name", "group")  # become folder and file names (heatmaps, curves)

# Largest member a reader accepts, by kind: a tar header may declare any size (1 TiB), and a reader
# must not allocate it. Real records hold ~300-byte json and images of a few MB at most.
MAX_MEMBER_BYTES = {META_EXTENSION: 1 << 20, CLASS_EXTENSION: 1 << 10, MASK_EXTENSION: 64 << 20,
                    "png": 256 << 20, "jpg": 256 << 20}
MAX_OTHER_MEMBER_BYTES = 1 << 20
# Members a record uses (the reader reads no other, only notes their names) and the most members one key
# may have: a record holds 4 at most; thousands under one key are an attack on the reader, not a record.
RECORD_EXTENSIONS = (*IMAGE_EXTENSIONS, MASK_EXTENSION, META_EXTENSION, CLASS_EXTENSION)
MAX_MEMBERS_PER_SAMPLE = 16


class SchemaError(ValueError):
    """A record or manifest that does not follow the contract."""


@dataclass(frozen=True)
class RecordMeta:
    """The ``json`` member of a sample."""

    dataset: str
    class_name: str
    class_id: int
    group: str  # what metrics are grouped by; class_name except for COCO-AD
    split: str  # train | val | test
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal samples
    view: str  # Real-IAD C1..C5, MANTA crop index; "" otherwise
    source: str  # source image path relative to the dataset root
    width: int  # of the source image (before any resize or crop)
    height: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def class_key(self) -> str:
        """The name under which the class enters a (merged) class index."""
        return class_key(self.dataset, self.class_name)


def class_key(dataset: str, class_name: str) -> str:
    return f"{dataset}/{class_name}"


def class_key_form(name: str) -> str:
    """A "dataset/class" name the way sample keys spell it (``{key_part(dataset)}/{key_part(class)}``): two
    classes of one build must not share it, and a class filter on keys must compare in this form."""
    dataset, _, class_name = str(name).partition("/")
    return f"{key_part(dataset)}/{key_part(class_name)}"


def key_part(text: str) -> str:
    """A key component: dots and other separators become ``_`` (WebDataset splits keys at dots)."""
    part = _KEY_PART_RE.sub("_", str(text)).strip("_")
    if not part:
        raise SchemaError(f"empty key component from {text!r}")
    return part


def make_key(dataset: str, class_name: str, split: str, defect: str, stem: str, view: str = "") -> str:
    """``{dataset}/{class}/{split}/{defect}/{stem}[_{view}]`` with no dots."""
    if split not in SPLITS:
        raise SchemaError(f"split {split!r} is not one of {SPLITS}")
    parts = [key_part(p) for p in (dataset, class_name, split, defect)]
    last = key_part(stem) + (f"_{key_part(view)}" if view else "")
    return "/".join(parts + [last])


def shard_name(split: str, index: int) -> str:
    if split not in SPLITS:
        raise SchemaError(f"split {split!r} is not one of {SPLITS}")
    return f"{split}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """``("train", 3)`` for ``train-000003.tar``; None for anything else."""
    m = _SHARD_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def member_limit(ext: str) -> int:
    """The size cap of a member with extension ``ext`` (``"json"``, ``"mask.png"``, ``"png"``, ...)."""
    return MAX_MEMBER_BYTES.get(ext, MAX_OTHER_MEMBER_BYTES)


def check_path_name(value: str, what: str) -> str:
    """``value`` if it is usable as one folder or file name: not empty, not ``.``/``..``, no separator or
    control character; SchemaError naming ``what`` otherwise."""
    if not value or value in (".", "..") or _UNSAFE_NAME_RE.search(value):
        raise SchemaError(f"{what} {value!r} is not a plain name (empty, '.', '..', a separator or a control "
                          "character): refused, it would become a path")
    return value


def safe_name(text: str) -> str:
    """``text`` as one folder or file name (separators and control characters become ``_``); SchemaError
    when nothing usable is left (empty, ``.`` or ``..``)."""
    return check_path_name(_UNSAFE_NAME_RE.sub("_", text), "name")


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> None:
    """Check the structure of a parsed manifest; SchemaError naming ``where`` and the first problem.

    Shard names must be this builder's ``{split}-NNNNNN.tar``: file names inside the build, never a
    path, a URL or a ``pipe:`` command.
    """
    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise SchemaError(f"{where}: {problem}")

    need(isinstance(manifest, dict), f"expected a JSON object, got {type(manifest).__name__}")
    for key in ("dataset", "classes", "shards"):
        need(key in manifest, f"manifest lacks {key!r}")
    need(isinstance(manifest["dataset"], str), f"dataset must be a string, got {manifest['dataset']!r}")
    check_path_name(manifest["dataset"], f"{where}: dataset")
    classes = manifest["classes"]
    need(isinstance(classes, dict) and all(isinstance(k, str) and type(v) is int for k, v in classes.items()),
         "classes must map 'dataset/class' names to integer ids")
    need(isinstance(manifest["shards"], list), "shards must be a list")
    for i, entry in enumerate(manifest["shards"]):
        need(isinstance(entry, dict), f"shards[{i}] must be an object, got {entry!r:.80}")
        missing = [k for k in SHARD_KEYS if k not in entry]
        need(not missing, f"shards[{i}] lacks {missing}")
        name = entry["name"]
        parsed = parse_shard_name(name) if isinstance(name, str) else None
        need(parsed is not None, f"shards[{i}].name {name!r:.120} is not a shard file name of this build "
                                 "({split}-NNNNNN.tar): refused (a shard is data, never a path or a command)")
        need(entry["split"] == parsed[0], f"shards[{i}]: {name} listed under split {entry['split']!r}")
        for key in ("samples", "bytes"):
            need(type(entry[key]) is int and entry[key] >= 0, f"shards[{i}].{key} must be a count >= 0")
        need(isinstance(entry["sha256"], str), f"shards[{i}].sha256 must be a string")
    for key, kind in (("counts", dict), ("skipped", list)):
        need(key not in manifest or isinstance(manifest[key], kind), f"{key} must be a {kind.__name__}")


def validate_meta(meta: Mapping[str, Any], where: str = "record") -> RecordMeta:
    """Check a decoded ``json`` member against the contract; raise SchemaError naming ``where``."""
    fields = {f.name: f.type for f in dataclasses.fields(RecordMeta)}
    missing = sorted(set(fields) - set(meta))
    if missing:
        raise SchemaError(f"{where}: json lacks {missing}")
    extra = sorted(set(meta) - set(fields))
    if extra:
        raise SchemaError(f"{where}: json has unknown fields {extra}")
    values: dict[str, Any] = {}
    for name, typ in fields.items():
        value = meta[name]
        want = int if typ == "int" else str
        if want is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise SchemaError(f"{where}: {name} must be an int, got {value!r}")
        if want is str and not isinstance(value, str):
            raise SchemaError(f"{where}: {name} must be a string, got {value!r}")
        values[name] = value
    rec = RecordMeta(**values)
    for name in PATH_NAME_FIELDS:
        try:
            check_path_name(values[name], name)
        except SchemaError as err:
            raise SchemaError(f"{where}: {err}") from None
    if rec.split not in SPLITS:
        raise SchemaError(f"{where}: split {rec.split!r} is not one of {SPLITS}")
    if rec.label not in (0, 1):
        raise SchemaError(f"{where}: label must be 0 or 1, got {rec.label}")
    if (rec.label == 0) != (rec.defect == NORMAL_DEFECT) and rec.dataset not in ("manta", "realiad"):
        # MANTA views with an empty mask and Real-IAD NG-folder views marked OK are normal
        # samples under a defect folder; everywhere else "good" and label 0 go together.
        raise SchemaError(f"{where}: label {rec.label} contradicts defect {rec.defect!r}")
    if rec.class_id < 0:
        raise SchemaError(f"{where}: class_id must be >= 0, got {rec.class_id}")
    return rec
