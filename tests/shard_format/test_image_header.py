"""Image headers and the pixel limit: an image that claims too many pixels is refused before it is decoded, by
the runtime's decoder, the builder, verify and predict, and listed like any unreadable image."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from shard_format.errors import ShardError
from shard_format.image_header import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageRefused, image_size, max_pixels
from shard_format.record import decode_image, decode_mask


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: signature, IHDR and IEND only (nothing to decode)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def encoded(ext: str, shape: tuple[int, ...] = (37, 53, 3)) -> bytes:
    return cv2.imencode(ext, np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))[1].tobytes()


@pytest.mark.parametrize("ext, fmt", [(".png", "png"), (".jpg", "jpg"), (".bmp", "bmp"), (".tiff", "tiff"),
                                      (".webp", "webp")])
def test_header_sizes_match_the_decoder(ext: str, fmt: str) -> None:
    assert image_size(encoded(ext)) == (fmt, 53, 37)
    assert image_size(encoded(ext, (37, 53))) == (fmt, 53, 37)  # gray


def test_a_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_pixels() == DEFAULT_MAX_PIXELS >= 5 * 3000 * 2000  # well above a 5-view strip of Real-IAD originals
    with pytest.raises(ImageRefused, match=r"shard:k: image of 30000 x 30000 = 900000000 pixels is over the limit"):
        decode_image(bomb_png(), "shard:k")
    with pytest.raises(ImageRefused, match=r"mask of 30000 x 30000"):
        decode_mask(bomb_png(), "shard:k")
    with pytest.raises(ImageRefused, match="header not recognised"):
        decode_image(b"P6\n2 2\n255\n" + bytes(12), "shard:k")  # a PPM: its size is not checked, so refused
    small = encoded(".png", (32, 32, 3))
    assert decode_image(small, "k").shape == (32, 32, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the override applies to real images too
    with pytest.raises(ImageRefused, match=r"32 x 32 = 1024 pixels is over the limit of 1000 \(CCL_MAX_IMAGE_PIXELS\)"):
        decode_image(small, "k")
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ShardError, match="CCL_MAX_IMAGE_PIXELS='lots': expected a positive whole number"):
        max_pixels()


def test_builder_and_predict_skip_a_bomb(tmp_path: Path) -> None:
    from pipelines.deploy.predict import read_rgb
    from shard_tools.images import ImageError, sniff

    with pytest.raises(ImageError, match="over the limit"):
        sniff(bomb_png())
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    image, reason = read_rgb(tmp_path / "bomb.png")
    assert image is None and "30000 x 30000 = 900000000 pixels is over the limit" in reason


def test_verify_lists_a_bomb_in_a_build(tmp_path: Path) -> None:
    from shard_tools.verify import verify_build
    from tests.pipelines.shard_fixtures import sample_members, write_manifest, write_shard

    rng = np.random.default_rng(0)
    good = sample_members("toy", "a", 0, "test", 0, 16, rng, anomalous=False)
    bad = [(name, bomb_png() if name.endswith(".png") else data)
           for name, data in sample_members("toy", "a", 0, "test", 1, 16, rng, anomalous=False)]
    entry = write_shard(tmp_path, "test", 0, [good, bad])
    counts = {"train": {}, "val": {}, "test": {"a": {"normal": 2, "anomalous": 0}}}
    write_manifest(tmp_path, "toy", {"toy/a": 0}, counts, [entry])
    problems = verify_build(tmp_path)
    assert len(problems) == 1 and "img00001: image of 30000 x 30000" in problems[0] and "over the limit" in problems[0]
