"""Folder helpers the sources share: sorted image listings, masks paired by name, relative paths."""

from __future__ import annotations

import os
from pathlib import Path

from shard_tools.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory``, sorted by name (never by directory order)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def subdirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def masks_by_stem(directory: Path) -> dict[str, Path]:
    """Masks keyed by the image stem they belong to: ``x_mask.png`` and ``x.png`` (any extension) both
    map to ``x``; PNG wins when one stem has several files."""
    out: dict[str, Path] = {}
    for path in list_images(directory):
        for stem in {path.stem, path.stem.removesuffix("_mask")}:
            png_upgrade = path.suffix.lower() == ".png" and stem in out and out[stem].suffix.lower() != ".png"
            if stem not in out or png_upgrade:
                out[stem] = path
    return out


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (plain string work: it runs once per image)."""
    text, base = str(path), str(root).rstrip(os.sep) + os.sep
    return text[len(base):].replace(os.sep, "/") if text.startswith(base) else path.relative_to(root).as_posix()


def require_root(root: Path, dataset: str) -> Path:
    if not root.exists():
        raise UserError(f"--root {dataset}={root}: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--root {dataset}={root}: {root} is not a directory")
    return root


def empty_layout(dataset: str, root: Path, expected: str) -> UserError:
    return UserError(f"--root {dataset}={root}: found none of the expected layout; expected {expected}")


def inside(base: Path, relative: str, root: Path, where: str) -> Path:
    """``base / relative`` for a path read from a data file: UserError naming ``where`` when it is absolute or
    its ``..`` leave ``root`` (a hostile split file must not pack files from elsewhere into the shards).
    Lexical, so that symlinks the user put inside ``root`` keep working."""
    if not relative or os.path.isabs(relative) or Path(relative).drive:
        raise UserError(f"{where}: path {relative!r} is not relative to the data root {root}")
    joined = Path(os.path.normpath(base / relative))
    top = Path(os.path.normpath(root))
    if joined != top and top not in joined.parents:
        raise UserError(f"{where}: path {relative!r} leaves the data root {root}")
    return joined
