"""Binary real/fake metrics with DeepfakeBench semantics, computed in numpy.

scikit-learn is only a test dependency, so the ROC / precision-recall curves are built here; the
tests check every number against sklearn. Scores are P(fake); labels are 0 real, 1 fake.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepfake_detect.errors import DataError
# Scores -> labels live with inference, which makes the decisions; metrics count them.
from deepfake_detect.inference.decisions import DEFAULT_THRESHOLD, predict_labels, to_numpy

# Guo et al. (2017) report ECE with 15 equal-width bins; the same count keeps numbers comparable.
ECE_BINS = 15


def check_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int64 in {0, 1}, scores float64 in [0, 1]); raises DataError otherwise."""
    y = to_numpy(labels, "labels")
    s = to_numpy(scores, "scores")
    if y.shape[0] != s.shape[0]:
        raise DataError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.shape[0] == 0:
        raise DataError("no samples to evaluate: labels and scores are empty")
    try:
        s = s.astype(np.float64)
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"labels and scores must be numeric: {exc}") from None
    if not np.all((yf == 0) | (yf == 1)):
        bad = np.unique(y[(yf != 0) & (yf != 1)])[:5]
        raise DataError(f"labels must be 0 (real) or 1 (fake), found {bad.tolist()}")
    if not np.all(np.isfinite(s)):
        raise DataError(f"scores contain {int(np.sum(~np.isfinite(s)))} NaN/inf values")
    if s.min() < 0.0 or s.max() > 1.0:
        raise DataError(
            f"scores must be probabilities P(fake) in [0, 1], found range "
            f"[{s.min():.4g}, {s.max():.4g}]; apply softmax/sigmoid to logits first"
        )
    return yf.astype(np.int64), s


def check_threshold(threshold: Any) -> float:
    """The threshold as a float strictly inside (0, 1); raises DataError otherwise."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise DataError(f"threshold must be a number strictly between 0 and 1, got {threshold!r}")
    return value


def _clf_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps, thresholds) at each distinct score, highest score first."""
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = 1.0 + last_of_group - tps
    return fps, tps, s_sorted[last_of_group]


def roc_curve(
    labels: Any, scores: Any, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) exactly as sklearn.metrics.roc_curve(pos_label=1).

    A point at threshold t predicts fake for score >= t; the first point (inf) is (0, 0). Collinear
    points are dropped by default like sklearn, which changes where the EER argmin lands.
    Requires both classes.
    """
    y, s = check_inputs(labels, scores)
    fps, tps, thr = _clf_counts(y, s)
    if drop_intermediate and fps.shape[0] > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, corner, True])
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    if fps[-1] <= 0 or tps[-1] <= 0:
        raise DataError("the ROC curve needs both real and fake samples")
    return fps / fps[-1], tps / tps[-1], thr


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as sklearn's precision_recall_curve (recall decreasing)."""
    y, s = check_inputs(labels, scores)
    fps, tps, thr = _clf_counts(y, s)
    if tps[-1] <= 0:
        raise DataError("the precision-recall curve needs fake samples")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def roc_auc(labels: Any, scores: Any) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: Any, scores: Any) -> float:
    """Step-wise AP (no interpolation), equal to sklearn's average_precision_score."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def eer_point(labels: Any, scores: Any) -> tuple[float, int, np.ndarray]:
    """(eer, index on the ROC curve, roc thresholds): FPR where |FNR - FPR| is smallest."""
    fpr, tpr, thr = roc_curve(labels, scores)
    idx = int(np.nanargmin(np.abs((1.0 - tpr) - fpr)))
    return float(fpr[idx]), idx, thr


def equal_error_rate(labels: Any, scores: Any) -> float:
    return eer_point(labels, scores)[0]


def confusion_matrix(labels: Any, predictions: Any) -> list[list[int]]:
    """[[TN, FP], [FN, TP]]: rows are the true class (real, fake), columns the predicted one."""
    y = to_numpy(labels, "labels").astype(np.int64)
    p = to_numpy(predictions, "predictions").astype(np.int64)
    return [
        [int(np.sum((y == 0) & (p == 0))), int(np.sum((y == 0) & (p == 1)))],
        [int(np.sum((y == 1) & (p == 0))), int(np.sum((y == 1) & (p == 1)))],
    ]


def _bin_index(s: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each score for `bins` equal-width bins over [0, 1], right-closed: (lo, hi].

    The first bin also holds 0, so no score in [0, 1] is dropped; a score on an inner edge
    belongs to the lower bin.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise DataError(f"bins must be a positive integer, got {bins!r}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    return np.searchsorted(edges[1:-1], s, side="left")


def reliability_curve(
    labels: Any, scores: Any, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per-bin calibration of P(fake) over `bins` equal-width bins of [0, 1] (right-closed).

    Returns numpy arrays: ``edges`` (bins + 1), ``confidence`` (mean score in the bin),
    ``frequency`` (share of fakes in the bin, the "accuracy" of a binary reliability diagram)
    and ``count`` (samples in the bin). Empty bins have NaN confidence and frequency.
    A perfectly calibrated detector has frequency == confidence in every bin.
    """
    y, s = check_inputs(labels, scores)
    idx = _bin_index(s, bins)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    score_sum = np.bincount(idx, weights=s, minlength=bins)
    fake_sum = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, score_sum / np.maximum(count, 1), np.nan)
        frequency = np.where(count > 0, fake_sum / np.maximum(count, 1), np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, int(bins) + 1),
        "confidence": confidence,
        "frequency": frequency,
        "count": count,
    }


def expected_calibration_error(labels: Any, scores: Any, bins: int = ECE_BINS) -> float:
    """ECE of P(fake): sum over bins of |share of fakes - mean score| x share of samples.

    The binary form of Guo et al.'s ECE, with the positive (fake) class probability binned into
    `bins` equal-width bins of [0, 1] (right-closed, 0 in the first bin); empty bins add nothing.
    It lies in [0, 1]; 0 means every bin's mean score equals its observed fake rate.
    """
    curve = reliability_curve(labels, scores, bins)
    count = curve["count"]
    full = count > 0
    gaps = np.abs(curve["frequency"][full] - curve["confidence"][full])
    return float(np.sum(gaps * count[full]) / count.sum())


def brier_score(labels: Any, scores: Any) -> float:
    """Mean squared difference between P(fake) and the label (0 real, 1 fake); lower is better."""
    y, s = check_inputs(labels, scores)
    return float(np.mean((s - y) ** 2))


def _ratio(num: int, den: int) -> float:
    # sklearn's default zero_division: an undefined precision/recall/F1 counts as 0.
    return num / den if den > 0 else 0.0


def binary_metrics(
    labels: Any, scores: Any, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """All metrics for one evaluation; ranking metrics are NaN (with a warning) on one class.

    Keys: auc, eer, ap, acc (at 0.5), acc_at_threshold, threshold, precision, recall, f1 (fake is
    the positive class, at `threshold`), f1_real, macro_f1, balanced_acc, confusion
    [[TN, FP], [FN, TP]], n, n_real, n_fake, warnings (list of str), ece (expected calibration
    error of P(fake) over 15 equal-width bins, see `expected_calibration_error`) and brier (mean
    squared error of P(fake) against the label). ece and brier are defined for one class too.
    """
    threshold = check_threshold(threshold)
    y, s = check_inputs(labels, scores)
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    notes: list[str] = []

    if n_fake and n_real:
        auc = roc_auc(y, s)
        eer = equal_error_rate(y, s)
        ap = average_precision(y, s)
    else:
        auc = eer = ap = math.nan
        only = "real" if n_fake == 0 else "fake"
        notes.append(f"only {only} samples ({y.size}): auc, eer and ap are undefined (NaN)")

    acc = float(np.mean(predict_labels(s, DEFAULT_THRESHOLD) == y))
    pred = predict_labels(s, threshold)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    f1_real = _ratio(2 * tn, 2 * tn + fn + fp)
    # Balanced accuracy averages the recall of the classes present, as sklearn does.
    per_class = ((recall, n_fake), (_ratio(tn, tn + fp), n_real))
    class_recalls = [r for r, present in per_class if present]
    return {
        "auc": auc,
        "eer": eer,
        "ap": ap,
        "acc": acc,
        "acc_at_threshold": float((tn + tp) / y.size),
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "f1_real": f1_real,
        "macro_f1": (f1 + f1_real) / 2.0,
        "balanced_acc": float(np.mean(class_recalls)),
        "confusion": [[tn, fp], [fn, tp]],
        "n": int(y.size),
        "n_real": n_real,
        "n_fake": n_fake,
        "warnings": notes,
        "ece": expected_calibration_error(y, s),
        "brier": brier_score(y, s),
    }


def metrics_to_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """Copy with NaN/inf floats replaced by None, so json.dumps writes null (valid JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return clean(metrics)
