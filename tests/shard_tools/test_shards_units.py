"""Small pieces of the writer checked against independent references (tarfile, PIL)."""

from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest
from PIL import Image

from ccl.data import image_ops
from shard_format.writer import member_header
from shard_tools.images import ImageError, sniff
from shard_tools.parallel import ordered_map


@pytest.mark.parametrize("name", ["a", "mvtec/bottle/test/crack/000.png", "x" * 99, "x" * 100, "é/ü" * 20])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 123456789])
def test_member_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = "ccl"
    assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_sniff_size_matches_pil_and_catches_truncation(ext):
    array = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = cv2.imencode(ext, array)[1].tobytes()
    fmt, width, height = sniff(data)
    assert (width, height) == Image.open(io.BytesIO(data)).size == (53, 37)
    assert fmt == {".png": "png", ".jpg": "jpg", ".bmp": "bmp"}[ext]
    if ext != ".bmp":
        with pytest.raises(ImageError, match="truncated"):
            sniff(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError):
        sniff(b"not an image at all")


def _double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


@pytest.mark.parametrize("shape", [(40, 56), (10, 14), (10, 40)], ids=["shrink", "enlarge", "mixed"])
def test_the_resize_rule_of_builder_training_and_evaluation(shape):
    """One resize rule (ccl.data.image_ops, which the builder calls): area when shrinking a side, bilinear
    when enlarging both; masks binarised at 0.5."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = np.zeros(shape, bool)
    mask[2:7, 3:9] = True
    flag = cv2.INTER_LINEAR if shape[0] < 24 and shape[1] < 24 else cv2.INTER_AREA
    assert np.array_equal(image_ops.resize_image(image, 24), cv2.resize(image, (24, 24), interpolation=flag))
    expected = cv2.resize(mask.astype(np.float32), (24, 24), interpolation=flag) >= 0.5
    assert np.array_equal(image_ops.resize_mask(mask, 24), expected)


def test_ordered_map_keeps_order_and_reads_ahead_a_bounded_amount():
    pulled = []

    def source():
        for i in range(400):
            pulled.append(i)
            yield i

    results = ordered_map(_double, source(), workers=2, batch=4, window_per_worker=2)
    first = next(results)
    assert first == 0 and len(pulled) <= 4 * (2 * 2 + 1)  # at most the window of batches in flight
    assert [first, *results] == [2 * i for i in range(400)]


def test_demo_data_cli_is_deterministic_and_in_mvtec_layout(tmp_path):
    from shard_tools.demo_data import main as demo_main

    def tree(path):
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

    args = ["--per-class", "3", "--size", "32", "--test-good", "1", "--test-defect", "3"]
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        assert demo_main(["--out", str(tmp_path / name), "--seed", seed, *args]) == 0
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b and a != c and set(a) == set(c)
    assert len([k for k in a if "/train/good/" in k]) == 6 * 3
    for key in (k for k in a if "/test/" in k and "/good/" not in k):
        cls, _, defect, name = key.split("/")
        mask = cv2.imdecode(np.frombuffer(a[f"{cls}/ground_truth/{defect}/{name[:-4]}_mask.png"], np.uint8), 0)
        assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) == {0, 255}
