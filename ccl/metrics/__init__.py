"""Streaming, mergeable anomaly-detection metrics, and the RD anomaly map."""

from ccl.metrics.anomaly_map import anomaly_map, gaussian_blur, image_score
from ccl.metrics.anomaly_metrics import AnomalyMetrics, merged_grids
from ccl.metrics.binning import Grid, LinearBins, order_keys
from ccl.metrics.report import IMAGE_METRICS, METRICS, PIXEL_METRICS, summarize, to_csv_rows, to_markdown

__all__ = [
    "AnomalyMetrics",
    "IMAGE_METRICS",
    "LinearBins",
    "METRICS",
    "PIXEL_METRICS",
    "anomaly_map",
    "gaussian_blur",
    "image_score",
    "Grid",
    "merged_grids",
    "order_keys",
    "summarize",
    "to_csv_rows",
    "to_markdown",
]
