"""Image dimensions from the header, and the pixel limit checked before any image is decoded.

    fmt, width, height = check_image_header(data)        # ImageRefused when unknown or over the limit

A small file can claim a huge image (a 30000 x 30000 PNG of zeros compresses to under 1 MB and
decodes to 2.7 GB): every reader of untrusted images (the shard builder, verify, the training and
evaluation readers, predict) calls this first and decodes only what it accepts. PNG, JPEG, BMP, TIFF
and WebP headers are parsed here (standard library only); anything else is refused, since its size
cannot be known without decoding it.

The limit is ``DEFAULT_MAX_PIXELS`` (100 megapixels: Real-IAD's originals are ~5 MP, MANTA's 5-view
strips a few MP), or the environment variable ``CCL_MAX_IMAGE_PIXELS``.
"""

from __future__ import annotations

import os
import struct

from shard_format.errors import ShardError

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "CCL_MAX_IMAGE_PIXELS"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not


class ImageRefused(ShardError):
    """An image whose header is not recognised, or that claims more pixels than the limit (not decoded)."""


def max_pixels() -> int:
    """The pixel limit: ``CCL_MAX_IMAGE_PIXELS`` when set, else ``DEFAULT_MAX_PIXELS``."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ShardError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels")
    return value


def png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first frame header, walking the marker segments (EXIF thumbnails are inside
    APP segments and skipped with them)."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def bmp_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:  # OS/2 core header: 16-bit sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD (the page a decoder reads), classic TIFF and BigTIFF."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    try:
        version = struct.unpack(order + "H", data[2:4])[0]
        if version == 42:
            offset = struct.unpack(order + "I", data[4:8])[0]
            count, entry, start = struct.unpack(order + "H", data[offset:offset + 2])[0], 12, offset + 2
        elif version == 43:
            offset = struct.unpack(order + "Q", data[8:16])[0]
            count, entry, start = struct.unpack(order + "Q", data[offset:offset + 8])[0], 20, offset + 8
        else:
            return None
        found: dict[int, int] = {}
        for n in range(min(count, 4096)):
            at = start + n * entry
            tag, kind = struct.unpack(order + "HH", data[at:at + 4])
            if tag in (256, 257):
                value_at = at + (12 if version == 43 else 8)
                code = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if code is None:
                    return None
                found[tag] = struct.unpack(order + code, data[value_at:value_at + struct.calcsize(code)])[0]
    except struct.error:  # the header points past the end of the file
        return None
    return (found[256], found[257]) if 256 in found and 257 in found else None


def webp_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


_PARSERS = {"png": png_size, "jpg": jpeg_size, "bmp": bmp_size, "tiff": tiff_size, "webp": webp_size}


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header (png | jpg | bmp | tiff | webp), None when not recognised."""
    for fmt, parse in _PARSERS.items():
        size = parse(data)
        if size is not None:
            return fmt, size[0], size[1]
    return None


def pixel_problem(width: int, height: int, limit: int | None = None, what: str = "image") -> str | None:
    """Why an image of ``width`` x ``height`` is refused (None when it is within ``limit``, default
    ``max_pixels()``)."""
    limit = max_pixels() if limit is None else limit
    if width < 1 or height < 1:
        return f"{what} header claims {width} x {height} pixels"
    if width * height > limit:
        return (f"{what} of {width} x {height} = {width * height} pixels is over the limit of {limit} "
                f"({MAX_PIXELS_ENV}): refused before decoding")
    return None


def check_image_header(data: bytes, what: str = "image", limit: int | None = None) -> tuple[str, int, int]:
    """``(format, width, height)`` of an image that may be decoded; ImageRefused with the reason otherwise."""
    found = image_size(data)
    if found is None:
        raise ImageRefused(f"{what} is not a PNG, JPEG, BMP, TIFF or WebP file (header not recognised)")
    problem = pixel_problem(found[1], found[2], limit, what)
    if problem is not None:
        raise ImageRefused(problem)
    return found
