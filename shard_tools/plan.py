"""From a source's items to the build plan: class index, val split, duplicate keys, class interleaving."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field

from shard_format.schema import SPLITS, class_key, class_key_form, make_key
from shard_tools.errors import UserError
from shard_tools.items import Item, Scan, Skip


@dataclass
class Plan:
    """Everything the writer needs, in write order."""

    classes: dict[str, int]  # "dataset/class" -> id, sorted by name
    splits: dict[str, list[Item]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)


def make_plan(scan: Scan, val_fraction: float, seed: int) -> Plan:
    """Deterministic: depends on the items (in any order), the fraction and the seed only."""
    items = sorted(scan.items, key=_sort_key)
    names = sorted({class_key(i.dataset, i.class_name) for i in items})
    check_key_collisions(names)
    classes = {name: idx for idx, name in enumerate(names)}
    items = [dataclasses.replace(i, class_id=classes[class_key(i.dataset, i.class_name)]) for i in items]
    items = _move_to_val(items, val_fraction, seed)
    items, duplicates = _drop_duplicates(items)
    plan = Plan(classes=classes, skipped=list(scan.skipped) + duplicates)
    for split in SPLITS:
        plan.splits[split] = interleave([i for i in items if i.split == split], seed, split)
    return plan


def check_key_collisions(names: list[str]) -> None:
    """Classes whose names differ only in what keys replace (``coins x``, ``coins.x``) would share their
    samples' keys, and all but one of each pair would be dropped as duplicates: UserError naming both."""
    seen: dict[str, str] = {}
    for name in names:
        form = class_key_form(name)
        if form in seen:
            raise UserError(f"classes {seen[form]!r} and {name!r} both become {form!r} in sample keys (dots, "
                            "spaces and other separators become _): rename one of their folders")
        seen[form] = name


def item_key(item: Item) -> str:
    return make_key(item.dataset, item.class_name, item.split, item.defect, item.stem, item.view)


def _sort_key(item: Item) -> tuple:
    return (item.class_name, item.split, item.source, item.view)


def val_count(n: int, fraction: float) -> int:
    """How many of a class's n normal training samples go to val (at least one, never all)."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, round(fraction * n)), n - 1)


def _move_to_val(items: list[Item], fraction: float, seed: int) -> list[Item]:
    """Move ``fraction`` of each class's normal training samples to val.

    Items of one physical sample (``Item.sample``: Real-IAD's five views) move together, so a sample
    never straddles train and val; a sample with an anomalous training view stays in train. Items
    without a sample are drawn one by one (the draw is then the same as before samples existed).
    """
    units: dict[int, dict[tuple, list[int]]] = defaultdict(dict)  # class -> sample -> item indices
    blocked: set[tuple] = set()
    for idx, item in enumerate(items):
        if item.split != "train":
            continue
        unit = (item.class_id, item.sample) if item.sample else (item.class_id, idx)
        if item.label != 0:
            blocked.add(unit)
        else:
            units[item.class_id].setdefault(unit, []).append(idx)
    chosen: set[int] = set()
    for class_id, groups in sorted(units.items()):
        eligible = [indices for unit, indices in groups.items() if unit not in blocked]
        rng = random.Random(f"{seed}/val/{class_id}")
        for indices in rng.sample(eligible, val_count(len(eligible), fraction)):
            chosen.update(indices)
    return [dataclasses.replace(it, split="val") if idx in chosen else it for idx, it in enumerate(items)]


def _drop_duplicates(items: list[Item]) -> tuple[list[Item], list[Skip]]:
    """Keys must be unique; sanitising names (dots become _) can make two files collide."""
    seen: dict[str, str] = {}
    kept, skipped = [], []
    for item in items:
        keys = [item_key(item)] if item.tiles == 1 else [item_key(dataclasses.replace(item, view=str(v)))
                                                         for v in range(item.tiles)]
        clash = next((k for k in keys if k in seen), None)
        if clash is not None:
            skipped.append(Skip(item.source, f"duplicate sample key {clash} (also from {seen[clash]})"))
            continue
        seen.update((k, item.source) for k in keys)
        kept.append(item)
    return kept, skipped


def interleave(items: list[Item], seed: int, split: str) -> list[Item]:
    """Shuffle within each class, then merge classes in proportion, so any stretch of a split mixes classes.

    Item j of a class with n items gets position (j + u) / n with u uniform in [0, 1): every class is
    spread evenly over the whole split, with seeded jitter.
    """
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item.class_id].append(item)
    rng = random.Random(f"{seed}/{split}/interleave")
    keyed = []
    for class_id in sorted(by_class):
        members = by_class[class_id]
        random.Random(f"{seed}/{split}/{class_id}").shuffle(members)
        n = len(members)
        keyed.extend(((j + rng.random()) / n, class_id, j, item) for j, item in enumerate(members))
    keyed.sort(key=lambda t: t[:3])
    return [t[3] for t in keyed]


def plan_digest(items: list[Item]) -> str:
    """Fingerprint of a split's work list, so a resumed build knows its inputs did not change."""
    digest = hashlib.sha256()
    for i in items:
        digest.update(repr((item_key(i), i.source, i.label, i.class_id, i.group, i.tiles,
                            bool(i.mask_path), len(i.polygons), i.mask_optional)).encode())
    return digest.hexdigest()
