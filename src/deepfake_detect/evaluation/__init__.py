"""Metrics, reports and plots for evaluation results (video aggregation and the score -> label
rule come from :mod:`deepfake_detect.inference`; choosing thresholds is fitting, in
:mod:`deepfake_detect.calibration`).

Plotting functions are imported on first use so that importing metrics does not load matplotlib.
"""

from __future__ import annotations

from typing import Any

from deepfake_detect.inference.aggregation import (
    AGGREGATORS,
    aggregate_videos,
    register_aggregator,
)
from deepfake_detect.evaluation.bootstrap import (
    bootstrap_intervals,
    delong_test,
    paired_auc_difference,
)
from deepfake_detect.evaluation.groups import group_metrics, write_groups_csv
from deepfake_detect.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    average_precision,
    binary_metrics,
    confusion_matrix,
    equal_error_rate,
    metrics_to_json,
    precision_recall_curve,
    predict_labels,
    roc_auc,
    roc_curve,
)

_PLOTS = (
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "plot_score_histograms",
    "plot_learning_curves",
    "plot_group_metrics",
    "save_evaluation_plots",
)

__all__ = [
    "AGGREGATORS",
    "DEFAULT_THRESHOLD",
    "aggregate_videos",
    "average_precision",
    "binary_metrics",
    "bootstrap_intervals",
    "confusion_matrix",
    "delong_test",
    "equal_error_rate",
    "group_metrics",
    "metrics_to_json",
    "paired_auc_difference",
    "plot_confusion",
    "plot_group_metrics",
    "plot_learning_curves",
    "plot_pr",
    "plot_roc",
    "plot_score_histograms",
    "precision_recall_curve",
    "predict_labels",
    "register_aggregator",
    "roc_auc",
    "roc_curve",
    "save_evaluation_plots",
    "write_groups_csv",
]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from deepfake_detect.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
