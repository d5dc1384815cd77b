"""Re-read a build and check it against its manifest and the record contract.

    python shard_tools/verify.py OUT/<dataset>
    python shard_tools/verify.py s3://bucket/prefix/<dataset>     (a build in object storage)

Exit 0 with a one-line summary, or 1 with the list of problems.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shard_format.errors import ShardError, refusal  # noqa: E402
from shard_format.fetch import ShardOpener, StorageError  # noqa: E402
from shard_format.image_header import ImageRefused, check_image_header, max_pixels  # noqa: E402
from shard_format.location import filesystem, is_remote, join  # noqa: E402
from shard_format.manifest import read_manifest, sum_counts  # noqa: E402
from shard_format.reader import UNREAD_KEY, iter_range  # noqa: E402
from shard_format.record import structure_problems  # noqa: E402
from shard_format.schema import (  # noqa: E402
    CLASS_EXTENSION,
    IMAGE_EXTENSIONS,
    MANIFEST_NAME,
    MASK_EXTENSION,
    META_EXTENSION,
    SchemaError,
    class_key,
    parse_shard_name,
    validate_meta,
)
from shard_format.writer import file_sha256  # noqa: E402
from shard_tools.sources.mvtec import MASK_OPTIONAL  # noqa: E402

MAX_PROBLEMS_PER_SHARD = 20  # a broken shard should not drown the report


def verify_build(path: Path | str) -> list[str]:
    """Every problem found in the build at ``path`` (a folder or a remote prefix; empty when it is sound)."""
    directory = str(path)
    try:
        manifest = read_manifest(directory)
    except ShardError as exc:  # not a build, not JSON, or not the manifest's structure
        return [str(exc)]
    except OSError as exc:
        return [f"{join(directory, MANIFEST_NAME)}: cannot read the manifest ({exc.__class__.__name__}: {exc})"]
    shards, classes = manifest["shards"], manifest["classes"]
    problems: list[str] = []
    listed = {s["name"] for s in shards}
    problems += [f"{join(directory, name)}: shard file not listed in the manifest" for name in _file_names(directory)
                 if parse_shard_name(name) and name not in listed]
    entries, seen_keys = [], set()
    for shard in shards:
        found, counts = _check_shard(directory, shard, classes, seen_keys)
        problems += found
        entries.append({"split": shard["split"], "counts": counts})
    recomputed = sum_counts(entries)
    if recomputed != manifest.get("counts"):
        problems.append(f"{join(directory, MANIFEST_NAME)}: counts per split and class {manifest.get('counts')} "
                        f"differ from the shards' {recomputed}")
    return problems


def _file_names(directory: str) -> list[str]:
    if is_remote(directory):
        fs = filesystem(directory)
        return sorted(p.rstrip("/").rpartition("/")[2] for p in fs.ls(directory, detail=False))
    return sorted(p.name for p in Path(directory).iterdir())


def _check_shard(directory: str, shard: dict, classes: dict, seen_keys: set) -> tuple[list[str], dict]:
    path = join(directory, shard["name"])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    problems, opener = [], None
    if is_remote(path):  # fetched and checked against the manifest (size, sha256) before it is read
        opener = ShardOpener({path: (shard["bytes"], shard["sha256"])})
    elif not Path(path).is_file():
        return [f"{path}: missing"], counts
    else:
        if (size := Path(path).stat().st_size) != shard["bytes"]:
            problems.append(f"{path}: {size} bytes, manifest says {shard['bytes']}")
        if file_sha256(Path(path)) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt or replaced)")
    read = 0
    try:  # streamed sample by sample: memory holds one sample, not one shard
        for sample in iter_range(path, opener=opener):
            read += 1
            key = sample["__key__"]
            where = f"{path}:{key}"
            if key in seen_keys:  # also a key whose members are not adjacent in the tar
                problems.append(f"{where}: duplicate key")
            seen_keys.add(key)
            if (reason := refusal(sample)) is not None:  # a member over its size cap: not read
                problems.append(reason)
                continue
            members = {ext: data for ext, data in sample.items() if not ext.startswith("__")}
            unread = sample.get(UNREAD_KEY, [])  # members no record uses: the reader noted them, never read them
            problems += _check_sample(where, key, members, shard["split"], classes, counts, unread)
            if len(problems) > MAX_PROBLEMS_PER_SHARD:
                return problems + [f"{path}: more problems not listed"], counts
    except StorageError as exc:
        return problems + [str(exc)], counts
    except ShardError as exc:
        return problems + [f"{path}: not a readable tar ({exc})"], counts
    if read != shard["samples"]:
        problems.append(f"{path}: {read} samples, manifest says {shard['samples']}")
    return problems, counts


def _check_sample(where: str, key: str, members: dict[str, bytes], split: str, classes: dict,
                  counts: dict, unread: Sequence[str] = ()) -> list[str]:
    try:
        meta = validate_meta(json.loads(members[META_EXTENSION]), where)
    except KeyError:
        return [f"{where}: no {META_EXTENSION} member"]
    except (ValueError, SchemaError) as exc:
        return [str(exc) if isinstance(exc, SchemaError) else f"{where}: json does not parse ({exc})"]
    counts[meta.class_name][meta.label] += 1
    problems = structure_problems(where, key, members, meta, split, unread)
    if classes.get(class_key(meta.dataset, meta.class_name)) != meta.class_id:
        problems.append(f"{where}: class_id {meta.class_id} differs from the class index")
    if members.get(CLASS_EXTENSION, b"").decode(errors="replace").strip() != str(meta.class_id):
        problems.append(f"{where}: {CLASS_EXTENSION} member differs from class_id {meta.class_id}")
    images = [ext for ext in IMAGE_EXTENSIONS if ext in members]
    if len(images) != 1:  # structure_problems named it
        return problems
    try:  # the header first: an image claiming more pixels than the limit is never decoded
        check_image_header(members[images[0]])
    except ImageRefused as exc:
        return problems + [f"{where}: {exc}"]
    image = cv2.imdecode(np.frombuffer(members[images[0]], np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return problems + [f"{where}: image does not decode"]
    return problems + _check_mask(where, members.get(MASK_EXTENSION), image.shape[:2], meta)


def _check_mask(where: str, data: bytes | None, shape: tuple[int, int], meta) -> list[str]:
    if data is None:
        # Only some datasets may hold image-level anomalies (anomalous, no mask).
        if meta.label == 1 and meta.split == "test" and meta.dataset not in MASK_OPTIONAL:
            return [f"{where}: anomalous test sample without {MASK_EXTENSION}"]
        return []
    if meta.label != 1 or meta.split != "test":
        return [f"{where}: a mask on a sample that is not an anomalous test sample"]
    try:
        check_image_header(data, "mask")
    except ImageRefused as exc:
        return [f"{where}: {exc}"]
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        return [f"{where}: mask does not decode"]
    problems = []
    if mask.ndim != 2:
        problems.append(f"{where}: mask has {mask.shape[2]} channels, expected 1")
    if mask.shape[:2] != shape:
        problems.append(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 255}:
        problems.append(f"{where}: mask values {values[:8].tolist()} are not binary 0/255")
    if not values.any():
        problems.append(f"{where}: anomalous sample with an empty mask (no defect pixel)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python shard_tools/verify.py OUT/<dataset>", file=sys.stderr)
        return 2
    directory = args[0]
    try:
        max_pixels()  # a bad CCL_MAX_IMAGE_PIXELS is one line up front, not a problem on every image
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = verify_build(directory)
    if problems:
        print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    manifest = read_manifest(directory)
    samples = sum(s["samples"] for s in manifest["shards"])
    print(f"{directory}: OK, {len(manifest['shards'])} shards, {samples} samples, "
          f"{len(manifest['classes'])} classes, {len(manifest['skipped'])} skipped inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
