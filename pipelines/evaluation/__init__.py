"""Scoring: streaming metrics over the test shards (memory flat in the test-set size), and its reports.

    evaluate      an export (or a model during training) on every rank, or any method's saved maps
    map_files     saved anomaly maps of any method (``launch/evaluate.py --maps``)
    extremes      the highest- and lowest-scoring samples per group, gathered over ranks, as heatmaps
    html_report   ``OUT/report.html``: the evaluation as one self-contained page

Imports: ``pipelines.base``, ``pipelines.data``.
"""
