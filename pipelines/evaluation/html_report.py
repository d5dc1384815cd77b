"""``OUT/report.html``: an evaluation as one self-contained page that opens in any browser, offline.

Everything is inside the file (images as data URIs, the sorting script and the styles inline; a
Content-Security-Policy forbids any other source), so it can be mailed or copied to a line PC:

- the summary (images, skipped samples, shards, step, the F1-optimal image threshold),
- the means (overall and per dataset) and the per-class table, sortable by any column, with the
  false positives and misses of each class at that threshold,
- the pixel ROC and PRO curves of each dataset (``curves/<dataset>.png`` of the same evaluation),
- per class the highest- and lowest-scoring test images: the image with the ground-truth outline
  beside the heatmap overlay, each marked false positive / missed / correct at the threshold.

The threshold is the one ``launch/evaluate.py`` stores in the export's info.json for
``predict.py --threshold auto``: the marks show what prediction would decide on these images.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ccl.metrics.report import METRICS, dataset_of, percent, table_rows
from shard_format.atomic import write_atomic
from shard_format.schema import safe_name

REPORT_NAME = "report.html"
JPEG_QUALITY = 90  # the panels as JPEG: a tenth of the PNG bytes, so a 15-class report stays ~10 MB
Panel = tuple[str, str, int, float, str, bytes]  # group, "top"/"bottom", position, score, key, PNG bytes


def write_report(out: Path, result: dict[str, Any], keys: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                 groups: Sequence[str], panels: Sequence[Panel]) -> Path:
    """Write ``out/report.html`` (atomically) from a finished evaluation; returns its path.

    ``keys`` / ``labels`` / ``scores`` / ``groups``: every scored image; ``panels``: the rendered extremes.
    """
    threshold = result.get("threshold")
    label_of = dict(zip(keys, (int(v) for v in labels)))
    body = [_summary(result, threshold), _means(result), _table(result, scores, labels, groups, threshold),
            _curves(out, result), _classes(result, panels, label_of, threshold)]
    page = PAGE.format(title="Evaluation report", style=STYLE, script=SCRIPT, body="\n".join(body))
    path = out / REPORT_NAME
    return write_atomic(path, page)


# ---------------------------------------------------------------- sections


def _summary(result: dict[str, Any], threshold: float | None) -> str:
    shards = ", ".join(html.escape(str(s)) for s in result.get("shards", []))
    step = result.get("step")
    rule = ("none (no anomalous or no normal test image)" if threshold is None
            else f"<b>{threshold:.6g}</b> (F1-optimal over all images; anomalous if score &ge; threshold)")
    items = [f"<b>{result.get('images', 0)}</b> of {result.get('expected', 0)} test images scored, "
             f"<b>{len(result.get('skipped', []))}</b> skipped", f"image threshold: {rule}", f"shards: {shards}"]
    if step is not None:
        items.append(f"training step: {step}")
    return "<h1>Evaluation report</h1>\n<ul class='summary'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _means(result: dict[str, Any]) -> str:
    rows = [("all classes", result.get("mean", {}))]
    rows += [(f"mean {ds}", scores) for ds, scores in result.get("per_dataset", {}).items()]
    cards = []
    for label, scores in rows:
        values = "".join(f"<div><span>{m}</span><b>{percent(scores.get(m))}</b></div>" for m in METRICS[:3])
        cards.append(f"<div class='card'><h3>{html.escape(label)}</h3>{values}</div>")
    return "<h2>Means (%)</h2>\n<div class='cards'>" + "".join(cards) + "</div>"


def _decisions(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> tuple[int, int]:
    """(false positives, misses) at the threshold."""
    if threshold is None or not len(scores):
        return 0, 0
    flagged = scores >= threshold
    return int(np.sum(flagged & (labels == 0))), int(np.sum(~flagged & (labels == 1)))


def _table(result: dict[str, Any], scores: np.ndarray, labels: np.ndarray, groups: Sequence[str],
           threshold: float | None) -> str:
    groups_arr = np.asarray(groups)
    head = "".join(f"<th data-type='num' title='click to sort'>{m}</th>" for m in METRICS)
    head = f"<th data-type='text' title='click to sort'>class</th>{head}" + "".join(
        f"<th data-type='num' title='click to sort'>{c}</th>" for c in ("images", "anomalous", "false pos.", "missed"))
    body, foot = [], []
    for label, row in table_rows(result):
        if label.startswith("mean"):
            cells = "".join(_num_cell(row.get(m)) for m in METRICS) + "<td></td>" * 4
            foot.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
            continue
        sel = groups_arr == label
        fp, missed = _decisions(scores[sel], labels[sel], threshold)
        counts = result.get("counts", {}).get(label, {})
        extra = "".join(f"<td data-value='{v}'>{v}</td>" for v in
                        (counts.get("images", int(sel.sum())), counts.get("anomalous", int(labels[sel].sum()))))
        extra += f"<td data-value='{fp}' class='{'bad' if fp else ''}'>{fp}</td>"
        extra += f"<td data-value='{missed}' class='{'bad' if missed else ''}'>{missed}</td>"
        name = html.escape(label)
        body.append(f"<tr><td data-value='{name}'><a href='#{_anchor(label)}'>{name}</a></td>"
                    + "".join(_num_cell(row.get(m)) for m in METRICS) + extra + "</tr>")
    return ("<h2>Per class (%)</h2>\n<p class='hint'>Click a column header to sort; the means stay below.</p>\n"
            f"<table id='metrics' class='sortable'><thead><tr>{head}</tr></thead>\n<tbody>{''.join(body)}</tbody>\n"
            f"<tfoot>{''.join(foot)}</tfoot></table>")


def _num_cell(value: float | None) -> str:
    sort_value = "" if value is None else f"{float(value):.8f}"
    return f"<td data-value='{sort_value}'>{percent(value)}</td>"


def _curves(out: Path, result: dict[str, Any]) -> str:
    datasets = sorted({dataset_of(g) or "all" for g in result.get("per_group", {})})
    figures = []
    for ds in datasets:
        path = out / "curves" / f"{safe_name(ds)}.png"  # where write_reports put it
        if path.is_file():
            figures.append(f"<figure class='curves'><img alt='pixel ROC and PRO curves of {html.escape(ds)}' "
                           f"src='{_data_uri(path.read_bytes(), 'image/png')}'>"
                           f"<figcaption>{html.escape(ds)}: pixel ROC "
                           f"(left), PRO up to FPR {result.get('fpr_limit', 0.3)} (right)</figcaption></figure>")
    return "<h2>Curves</h2>\n" + ("".join(figures) or "<p>No pixel curves (no masks).</p>")


def _classes(result: dict[str, Any], panels: Sequence[Panel], label_of: dict[str, int], threshold: float | None) -> str:
    if not panels:
        return "<h2>Images</h2>\n<p>No heatmaps in this evaluation (--vis 0, or maps scored without images).</p>"
    sections = ["<h2>Highest- and lowest-scoring images per class</h2>\n<p class='hint'>Left: the test image with "
                "the ground-truth defect outlined in green; right: the anomaly map over it (one colour scale per "
                "class). Red frame: a normal image scored at or above the threshold (false positive); orange: an "
                "anomalous image below it (missed).</p>"]
    for group in sorted({p[0] for p in panels}):
        scores = result.get("per_group", {}).get(group, {})
        line = " &middot; ".join(f"{m} {percent(scores.get(m))}" for m in METRICS[:3])
        rows = []
        for kind, title in (("top", "highest scores"), ("bottom", "lowest scores")):
            mine = sorted((p for p in panels if p[0] == group and p[1] == kind), key=lambda p: p[2])
            figures = "".join(_figure(p, label_of.get(p[4]), threshold) for p in mine)
            rows.append(f"<h4>{title}</h4><div class='row'>{figures}</div>")
        sections.append(f"<section id='{_anchor(group)}'><h3>{html.escape(group)}</h3><p>{line}</p>{''.join(rows)}"
                        "</section>")
    return "\n".join(sections)


def _figure(panel: Panel, label: int | None, threshold: float | None) -> str:
    group, kind, pos, score, key, png = panel
    truth = {0: "normal", 1: "anomalous"}.get(label, "unknown")
    mark, css = "", "ok"
    if threshold is not None and label is not None:
        flagged = score >= threshold
        if flagged and label == 0:
            mark, css = "false positive", "fp"
        elif not flagged and label == 1:
            mark, css = "missed", "miss"
        else:
            mark = "correct"
    name = html.escape(key.split("/", 2)[-1])
    return (f"<figure class='panel {css}'><img alt='{name}' src='{_data_uri(_jpeg(png), 'image/jpeg')}'>"
            f"<figcaption>{name}<br>score {score:.4g} &middot; {truth}"
            f"{f' &middot; <b>{mark}</b>' if mark else ''}</figcaption></figure>")


# ---------------------------------------------------------------- helpers


def _anchor(group: str) -> str:
    return "c-" + "".join(ch if ch.isalnum() else "-" for ch in group)


def _jpeg(png: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a heatmap panel failed")
    return data.tobytes()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.hint { color: #666; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 1em; min-width: 12em; }
.card h3 { margin: 0.2em 0; font-size: 1em; }
.card div { display: flex; justify-content: space-between; gap: 1em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
thead th { background: #eef; cursor: pointer; user-select: none; white-space: nowrap; }
thead th[aria-sort=ascending]::after { content: " \\25B2"; }
thead th[aria-sort=descending]::after { content: " \\25BC"; }
tfoot th, tfoot td { background: #f4f4f4; font-weight: bold; }
td.bad { color: #b00; font-weight: bold; }
.row { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; padding: 4px; border: 3px solid transparent; }
figure.panel img { display: block; width: 520px; max-width: 90vw; image-rendering: pixelated; }
figure.curves img { display: block; max-width: 100%; }
figure.fp { border-color: #d00; }
figure.miss { border-color: #f90; }
figcaption { font-size: 0.85em; word-break: break-all; max-width: 520px; }
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var ascending = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      var numeric = th.dataset.type === 'num';
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (numeric) {  // undefined metrics ("-") sort last either way
          if (x === '' || y === '') { return (x === '') - (y === ''); }
          return ascending ? x - y : y - x;
        }
        return ascending ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    });
  });
});
"""
