"""Choosing the decision threshold on validation scores.

Candidates sit halfway between neighbouring distinct scores (and between the extreme scores and
0 / 1), so a threshold learnt on validation data is not glued to one validation sample's score.
With the package's `score > threshold` rule (see `predict_labels`) candidate j marks exactly the
j highest distinct scores as fake. Ties between equally good candidates go to the one closest to
0.5, then to the lower one. The 'fpr' strategy instead takes the lowest candidate whose
false-positive rate (reals called fake) stays within a target.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.evaluation.metrics import _clf_counts, check_inputs, check_threshold, eer_point

STRATEGIES = ("fixed", "eer", "max_acc", "max_f1", "max_macro_f1", "fpr")
_TIE_TOL = 1e-12

log = logging.getLogger(__name__)


def _candidates(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """(thresholds, tp, fp, j): candidate j marks the j highest distinct scores as fake."""
    fps, tps, distinct = _clf_counts(y, s)  # distinct scores, highest first
    his = np.r_[1.0, distinct]
    los = np.r_[distinct, 0.0]
    mids = (his + los) / 2.0
    # Neighbouring floats can round the midpoint onto `hi`; `lo` itself still splits correctly.
    mids = np.where((mids >= los) & (mids < his), mids, los)
    valid = (his > los) & (mids > 0.0) & (mids < 1.0)
    tp = np.r_[0.0, tps].astype(np.int64)
    fp = np.r_[0.0, fps].astype(np.int64)
    j = np.arange(his.size)
    return mids[valid], tp[valid], fp[valid], j[valid]


def threshold_candidates(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tp, fp) for every achievable split, thresholds strictly inside (0, 1).

    Sorted by decreasing threshold; tp / fp count fakes / reals with score > threshold.
    """
    y, s = check_inputs(labels, scores)
    thresholds, tp, fp, _ = _candidates(y, s)
    return thresholds, tp, fp


def _pick(thresholds: np.ndarray, values: np.ndarray) -> float:
    best = values >= values.max() - _TIE_TOL
    idx = np.flatnonzero(best)
    # lexsort: last key is primary -> distance to 0.5 first, then the threshold itself.
    order = np.lexsort((thresholds[idx], np.abs(thresholds[idx] - 0.5)))
    return float(thresholds[idx[order[0]]])


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def choose_threshold(
    labels: Any, scores: Any, strategy: str = "fixed", value: float = 0.5
) -> float:
    """Decision threshold in (0, 1) for `strategy` (see STRATEGIES); 'fixed' returns `value`.

    'eer' reproduces the ROC point whose FPR is reported as the EER; 'max_acc', 'max_f1' (fake
    class) and 'max_macro_f1' maximise that metric on the given data. 'fpr' treats `value` as a
    target false-positive rate and returns the lowest threshold whose FPR on the given data is
    at most `value` (so it detects the most fakes within that budget; see `fpr_threshold`).
    All but 'fixed' need both classes.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"eval.threshold.strategy: unknown strategy {strategy!r}; "
            f"choose one of {list(STRATEGIES)}"
        )
    if strategy == "fixed":
        return check_threshold(value)
    if strategy == "fpr":
        target = _check_target_fpr(value)

    y, s = check_inputs(labels, scores)
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    if n_fake == 0 or n_real == 0:
        only = "real" if n_fake == 0 else "fake"
        raise DataError(
            f"threshold strategy {strategy!r} needs validation data with both real and fake "
            f"samples, got only {only} ({y.size}); use eval.threshold.strategy: fixed or fix "
            "the validation split"
        )
    thresholds, tp, fp, groups = _candidates(y, s)
    tn = n_real - fp
    fn = n_fake - tp

    if strategy == "eer":
        _, idx, roc_thr = eer_point(y, s)
        # That ROC point predicts fake for score >= roc_thr[idx] (none at the leading inf): pick
        # the candidate marking the same scores, or the nearest one when the cut lies outside
        # (0, 1).
        wanted = int(np.unique(s[s >= roc_thr[idx]]).size)
        return float(thresholds[np.argmin(np.abs(groups - wanted))])
    if strategy == "fpr":
        return _lowest_within_fpr(thresholds, fp / n_real, target)
    if strategy == "max_acc":
        return _pick(thresholds, (tp + tn).astype(np.float64))
    if strategy == "max_f1":
        return _pick(thresholds, _f1(tp, fp, fn))
    return _pick(thresholds, (_f1(tp, fp, fn) + _f1(tn, fn, fp)) / 2.0)


def _check_target_fpr(value: Any) -> float:
    try:
        target = float(value)
    except (TypeError, ValueError):
        target = float("nan")
    if not 0.0 <= target < 1.0:
        raise ConfigError(
            f"eval.threshold.value: with strategy 'fpr' the value is the target false-positive "
            f"rate and must lie in [0, 1), got {value!r} (e.g. 0.01 for 1%)"
        )
    return target


def _lowest_within_fpr(thresholds: np.ndarray, fpr: np.ndarray, target: float) -> float:
    # Candidates come with decreasing thresholds, so FPR never decreases along them: the last
    # one within the target is the lowest such threshold and has the highest recall.
    within = np.flatnonzero(fpr <= target + _TIE_TOL)
    if within.size:
        return float(thresholds[within[-1]])
    # Only reachable when real samples score exactly 1.0 (no threshold below 1 excludes them).
    log.warning(
        "no threshold below 1 keeps the false-positive rate within %.4g (best reachable %.4g, "
        "real samples score 1.0); using the strictest threshold", target, float(fpr.min()),
    )
    return float(thresholds[np.argmin(fpr)])


def fpr_threshold(labels: Any, scores: Any, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on (labels, scores) is <= `target_fpr`.

    Same as ``choose_threshold(labels, scores, "fpr", target_fpr)``.
    """
    return choose_threshold(labels, scores, "fpr", target_fpr)
