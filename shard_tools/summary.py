"""The table printed at the end of a build: one row per dataset."""

from __future__ import annotations

from shard_format.schema import SPLITS
from shard_tools.units import human_bytes

HEADER = ("dataset", "classes", *(f"{s} n/a" for s in SPLITS), "shards", "bytes", "skipped")


def split_totals(manifest: dict, split: str) -> tuple[int, int]:
    per_class = manifest["counts"].get(split, {})
    return (sum(c["normal"] for c in per_class.values()), sum(c["anomalous"] for c in per_class.values()))


def summary_row(manifest: dict) -> tuple[str, ...]:
    splits = tuple("{}/{}".format(*split_totals(manifest, s)) for s in SPLITS)
    return (manifest["dataset"], str(len(manifest["classes"])), *splits, str(len(manifest["shards"])),
            human_bytes(sum(s["bytes"] for s in manifest["shards"])), str(len(manifest["skipped"])))


def format_table(manifests: list[dict]) -> str:
    rows = [HEADER] + [summary_row(m) for m in manifests]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
