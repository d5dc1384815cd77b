"""What a source yields: one ``Item`` per source image, plus ``Skip`` for inputs left out.

Items carry paths and labels only (no pixels), so the plan of a large data set stays small;
the pixels are read by the workers (shard_tools/process.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Item:
    """One source image and everything needed to turn it into one or more samples."""

    dataset: str
    class_name: str
    group: str
    split: str  # train | test; the planner moves a fraction of train normals to val
    label: int
    defect: str
    stem: str
    path: str  # absolute path of the image
    source: str  # path relative to the dataset root given to the builder
    mask_path: str = ""  # a mask file (any non-zero pixel is defect)
    polygons: tuple[Any, ...] = ()  # COCO segmentations (polygons or RLE) whose union is the mask
    tiles: int = 1  # MANTA: the image holds this many views side by side
    view: str = ""
    sample: str = ""  # the physical sample several items show (Real-IAD: its S#### folder); "" = the item alone
    mask_optional: bool = False  # folder: an anomaly without a usable mask becomes image-level
    class_id: int = -1  # set by the planner from the build's class index


@dataclass(frozen=True, slots=True)
class Skip:
    """An input left out of the shards, with the reason (goes to the manifest)."""

    source: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass
class Scan:
    """A source's answer: the items found and the inputs it had to leave out."""

    items: list[Item] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True)
class SourceOptions:
    """Options that only some sources read."""

    dataset: str
    realiad_resolution: str | None = None
    realiad_jsons: str | None = None
    cocoad_split: int = 0
