"""Metric names, averages over groups and datasets, and the Markdown / CSV renderings of a result."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

IMAGE_METRICS = ("I-AUROC", "I-AP", "I-F1max")
PIXEL_METRICS = ("P-AUROC", "P-AP", "P-F1max", "AUPRO")
# The paper's table order (I-AUROC / P-AUROC / PRO), then AP and F1max.
METRICS = ("I-AUROC", "P-AUROC", "AUPRO", "I-AP", "P-AP", "I-F1max", "P-F1max")

Scores = Mapping[str, float | None]


def dataset_of(group: str) -> str | None:
    """``"mvtec/bottle"`` -> ``"mvtec"``; None for a group without a dataset prefix."""
    return group.split("/", 1)[0] if "/" in group else None


def mean_over(groups: list[Scores]) -> dict[str, float | None]:
    """Mean of each metric over the groups where it is defined (None where it is nowhere)."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        values = [g[metric] for g in groups if g.get(metric) is not None]
        out[metric] = sum(values) / len(values) if values else None
    return out


def summarize(per_group: Mapping[str, Scores]) -> dict[str, Any]:
    """``{"per_group", "per_dataset", "mean"}`` from per-group metrics."""
    datasets: dict[str, list[Scores]] = {}
    for name, scores in per_group.items():
        ds = dataset_of(name)
        if ds is not None:
            datasets.setdefault(ds, []).append(scores)
    return {
        "per_group": {name: dict(scores) for name, scores in per_group.items()},
        "per_dataset": {ds: mean_over(groups) for ds, groups in sorted(datasets.items())},
        "mean": mean_over(list(per_group.values())),
    }


def percent(value: float | None) -> str:
    """A metric in % with one decimal, "-" when it is undefined (the tables' cell format)."""
    return "-" if value is None else f"{100.0 * float(value):.1f}"


def table_rows(result: Mapping[str, Any]) -> list[tuple[str, Scores]]:
    """(label, metrics) rows: every group, then each dataset's mean, then the overall mean."""
    rows = [(name, result["per_group"][name]) for name in sorted(result["per_group"])]
    rows += [(f"mean {ds}", scores) for ds, scores in result.get("per_dataset", {}).items()]
    rows.append(("mean", result["mean"]))
    return rows


def to_markdown(result: Mapping[str, Any]) -> str:
    """A Markdown table in percent ("-" where a metric is undefined)."""
    lines = ["| group | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for label, scores in table_rows(result):
        bold = label.startswith("mean")
        cells = [percent(scores.get(m)) for m in METRICS]
        cells = [f"**{c}**" if bold and c != "-" else c for c in cells]
        name = markdown_text(label)
        lines.append(f"| {'**' + name + '**' if bold else name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_text(text: str) -> str:
    """A class name as Markdown table text: ``|`` cannot end the cell, HTML is shown, not rendered."""
    return html.escape(text, quote=False).replace("|", "\\|")


def to_csv_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """Header plus one row per group / dataset mean / overall mean; fractions, empty where undefined."""
    rows = [["group", *METRICS]]
    for label, scores in table_rows(result):
        rows.append([label] + ["" if scores.get(m) is None else f"{scores[m]:.6f}" for m in METRICS])
    return rows
