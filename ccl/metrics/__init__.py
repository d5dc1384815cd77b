"""Streaming, mergeable anomaly-detection metrics, and the RD anomaly map."""

from ccl.metrics.anomaly_map import anomaly_map, gaussian_blur, image_score
from ccl.metrics.anomaly_metrics import AnomalyMetrics
from ccl.metrics.binning import LinearBins, LogLinearBins, make_binning
from ccl.metrics.report import IMAGE_METRICS, METRICS, PIXEL_METRICS, summarize, to_csv_rows, to_markdown

__all__ = [
    "AnomalyMetrics",
    "IMAGE_METRICS",
    "LinearBins",
    "LogLinearBins",
    "METRICS",
    "PIXEL_METRICS",
    "anomaly_map",
    "gaussian_blur",
    "image_score",
    "make_binning",
    "summarize",
    "to_csv_rows",
    "to_markdown",
]
