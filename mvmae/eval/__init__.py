"""Evaluation: classification metrics, multi-view (per-video) aggregation and report files.

Used by the trainer's validation loop and by the eval command. ``metrics``, ``views`` and
``report`` import neither ``mvmae.train`` nor ``mvmae.shards``: only numpy and torch, and
matplotlib lazily, inside the plotting functions.
"""

from mvmae.eval.metrics import (
    METRIC_KEYS, StreamingMetrics, classification_metrics, confusion_matrix, per_class_report,
    top_k_accuracy)
from mvmae.eval.report import (
    format_table, plot_confusion_matrix, plot_training_curves, prediction_records, write_report)
from mvmae.eval.views import VideoScores, ViewAggregator, aggregate_views

__all__ = [
    "METRIC_KEYS", "StreamingMetrics", "VideoScores", "ViewAggregator", "aggregate_views",
    "classification_metrics", "confusion_matrix", "format_table", "per_class_report",
    "plot_confusion_matrix", "plot_training_curves", "prediction_records", "top_k_accuracy",
    "write_report",
]
