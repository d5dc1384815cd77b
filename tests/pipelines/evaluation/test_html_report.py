"""OUT/report.html of an evaluation: rendered by headless Chromium and checked for what a person sees (the table,
sorting by a click, the images, the false-positive / miss marks, no console errors, no network); escaping."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ccl.metrics import METRICS
from ccl.metrics.report import percent
from pipelines.evaluation.evaluate import evaluate_maps
from pipelines.evaluation.html_report import write_report
from tests.pipelines.deploy_fixtures import SIZE, DeployRuns
from tests.pipelines.headless_chromium import INSTALL_HINT, Browser, find_chromium

WIDTH, HEIGHT = 1280, 1600


def expected_marks(eval_dir: Path, threshold: float, n: int = 2) -> dict[str, str]:
    """From image_scores.csv: the n highest and lowest per class and their mark at the threshold."""
    with open(eval_dir / "image_scores.csv") as f:
        rows = list(csv.DictReader(f))
    marks = {}
    for group in {r["group"] for r in rows}:
        mine = sorted((r for r in rows if r["group"] == group), key=lambda r: float(r["score"]))
        for r in mine[:n] + mine[-n:]:
            flagged, label = float(r["score"]) >= threshold, int(r["label"])
            name = r["key"].split("/", 2)[-1]
            marks[name + "@" + group] = "fp" if flagged and not label else "miss" if label and not flagged else "ok"
    return marks


@pytest.mark.slow
def test_report_as_a_person_sees_it_in_chromium(deploy_runs: DeployRuns, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    deploy_runs.export("ccl")
    eval_dir = deploy_runs.root / "ccl" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    classes = sorted(metrics["per_group"])
    with Browser(binary, tmp_path / "profile") as browser:
        page = browser.open((eval_dir / "report.html").as_uri(), WIDTH, HEIGHT)
        first_screen = page.screenshot()
        table = page.evaluate("""(() => {
            const t = document.getElementById('metrics'); const r = t.getBoundingClientRect();
            return {top: r.top, width: r.width, height: r.height, visible: getComputedStyle(t).visibility,
                    head: [...t.tHead.rows[0].cells].map(c => c.textContent),
                    rows: [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent)),
                    foot: [...t.tFoot.rows].map(r => r.cells[0].textContent)}; })()""")
        images = page.evaluate("""[...document.images].map(i => ({
            ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth,
            shown: i.getBoundingClientRect().width, cls: i.parentElement.className,
            caption: i.parentElement.querySelector('figcaption').textContent,
            group: (i.closest('section') || {}).querySelector
                ? i.closest('section').querySelector('h3').textContent : ''}))""")
        header = page.evaluate("JSON.parse(JSON.stringify(document.querySelector('#metrics thead th:nth-child(2)')"
                               ".getBoundingClientRect()))")
        column = "[...document.querySelectorAll('#metrics tbody tr')].map(r => r.cells[0].textContent)"
        page.click(header["x"] + header["width"] / 2, header["y"] + header["height"] / 2)
        ascending = page.evaluate(column)
        page.click(header["x"] + header["width"] / 2, header["y"] + header["height"] / 2)
        descending = page.evaluate(column)
        page.evaluate(f"document.getElementById('c-demo-{classes[0].split('/')[1]}').scrollIntoView()")
        panels_screen = page.screenshot()
        problems = page.problems()
    (tmp_path / "first_screen.png").write_bytes(first_screen)  # for a person who wants to look
    assert problems == []  # no console error, no exception, no request beyond the file and its data: images
    # The table: on the first screen, one row per class with the values of metrics.json, the means below.
    assert table["visible"] == "visible" and table["width"] > 600 and 0 <= table["top"] < HEIGHT - table["height"]
    assert table["head"][:1 + len(METRICS)] == ["class", *METRICS]
    assert [r[0] for r in table["rows"]] == classes
    for row in table["rows"]:
        assert row[1:1 + len(METRICS)] == [percent(metrics["per_group"][row[0]][m]) for m in METRICS]
    assert table["foot"] == ["mean demo", "mean"]
    by_auroc = sorted(classes, key=lambda g: (metrics["per_group"][g]["I-AUROC"], g))
    assert [metrics["per_group"][g]["I-AUROC"] for g in ascending] == sorted(metrics["per_group"][g]["I-AUROC"]
                                                                             for g in classes)
    assert ascending != descending and sorted(ascending) == classes
    assert [metrics["per_group"][g]["I-AUROC"] for g in descending] == [metrics["per_group"][g]["I-AUROC"]
                                                                       for g in reversed(by_auroc)]
    # The images: every one decoded; the curves, and 2 highest + 2 lowest per class, marked at the threshold.
    assert images and all(i["ok"] and i["shown"] > 0 for i in images)
    panels = [i for i in images if "panel" in i["cls"]]
    assert len([i for i in images if i["cls"] == "curves"]) == 1 and len(panels) == 4 * len(classes)
    assert {i["w"] for i in panels} == {2 * SIZE + 4}  # image | gap | overlay
    want = expected_marks(eval_dir, metrics["threshold"])
    got = {i["caption"].split("score")[0] + "@" + i["group"]: i["cls"].split()[1] for i in panels}
    assert got == want
    assert "fp" in got.values()  # random weights: some normal images score above the threshold
    # What the screenshots show: text and lines on white first, the heatmaps' saturated colours further down.
    for png, saturated in ((first_screen, False), (panels_screen, True)):
        shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert shot.shape == (HEIGHT, WIDTH, 3)
        colourful = (shot.max(axis=2).astype(int) - shot.min(axis=2) > 60).mean()  # blended jet colours
        assert (shot < 100).all(axis=2).mean() > 0.005  # dark text
        assert (colourful > 0.05) == saturated, colourful


def test_report_escapes_shard_text_and_needs_no_panels(tmp_path: Path) -> None:
    group = "x/<script>alert(1)</script>"
    result = {"per_group": {group: {m: 0.5 for m in METRICS}}, "per_dataset": {"x": {m: 0.5 for m in METRICS}},
              "mean": {m: 0.5 for m in METRICS}, "threshold": 0.5, "images": 2, "expected": 2, "skipped": [],
              "shards": ["/data/'quoted'"], "counts": {group: {"images": 2, "anomalous": 1}}}
    png = cv2.imencode(".png", np.zeros((8, 20, 3), np.uint8))[1].tobytes()
    keys = ["x/c/test/good/<img src=x onerror=alert(2)>", "x/c/test/bad/b"]
    panels = [(group, "top", 0, 0.7, keys[0], png), (group, "bottom", 0, 0.2, keys[1], png)]
    page = write_report(tmp_path, result, keys, np.array([0, 1]), np.array([0.7, 0.2]), [group, group],
                        panels).read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert page.count("<script>") == 1  # the sorting script only
    assert "http://" not in page and "https://" not in page
    assert page.count("class='panel fp'") == 1 and page.count("class='panel miss'") == 1  # 0.7 normal, 0.2 anomalous
    # The standalone --maps evaluation has no images: its report says so.
    (tmp_path / "maps" / "a").mkdir(parents=True)
    for i in range(3):
        np.save(tmp_path / "maps" / "a" / f"{i}.npy", np.full((8, 8), i, np.float32))
    evaluate_maps(tmp_path / "maps", None, tmp_path / "out")
    assert "No heatmaps in this evaluation" in (tmp_path / "out" / "report.html").read_text()
