"""How sure is a number: bootstrap confidence intervals and paired comparisons of detectors.

Frames of one video are not independent (same face, same compression, same manipulation), so
resampling frames would claim far more certainty than the data hold. With ``clusters`` (the
video id of every row) whole videos are drawn with replacement and all their frames come
together. Draws are stratified by class: the real and the fake clusters are resampled
separately, each keeping its count, so every resample holds both classes and AUC is defined.

Speed: the scores are sorted once. A resample is a vector of integer weights (how often each
row was drawn); its ROC and precision-recall counts are cumulative sums of the weights in the
sorted order, computed with exactly the operations of :mod:`deepfake_detect.evaluation.metrics`
(all weights 1 gives bit-identical numbers; weight k equals k copies of the row).

``delong_test`` is DeLong's test for two correlated AUCs on the same rows, in the O(n log n)
midrank form of Sun & Xu (2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.metrics import check_inputs, check_threshold
from deepfake_detect.inference.decisions import DEFAULT_THRESHOLD, predict_labels

METRICS = ("auc", "eer", "ap", "acc", "acc_at_threshold")
_RANKING = ("auc", "eer", "ap")


# -- weighted metrics from one sort -----------------------------------------------------------


class _SortedScores:
    """Scores sorted once (highest first) with the distinct-score groups, ready to evaluate any
    integer weighting of the rows (a bootstrap resample) without sorting again."""

    def __init__(self, y: np.ndarray, s: np.ndarray, threshold: float) -> None:
        self.order = np.argsort(-s, kind="stable")
        s_sorted = s[self.order]
        self.y = y[self.order].astype(np.float64)
        # first row of every run of equal scores: the ROC has one point per distinct score
        self.starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
        self.tied = self.starts.size < s_sorted.size  # without ties a row is its own point
        self.correct = (predict_labels(s_sorted, DEFAULT_THRESHOLD) == self.y).astype(np.float64)
        self.correct_t = (predict_labels(s_sorted, threshold) == self.y).astype(np.float64)

    def metrics(self, w: np.ndarray, ranking: bool = True) -> dict[str, float]:
        """auc, eer, ap, acc, acc_at_threshold with row weights ``w`` given in sorted order.

        The ranking metrics are NaN unless both classes have weight (or with ``ranking`` False).
        """
        total = w.sum()
        # elementwise products, not `@`: a BLAS dot spins threads and crawls on a busy machine
        out = {"acc": float((w * self.correct).sum() / total),
               "acc_at_threshold": float((w * self.correct_t).sum() / total)}
        fps, tps = self._counts(w)
        if ranking and fps.size and fps[-1] > 0 and tps[-1] > 0:
            out.update(_ranking(fps, tps))
        else:
            out.update(dict.fromkeys(_RANKING, math.nan))
        return out

    def auc(self, w: np.ndarray) -> float:
        """The AUC alone (NaN when a class has no weight)."""
        fps, tps = self._counts(w)
        if not (fps[-1] > 0 and tps[-1] > 0):
            return math.nan
        fpr, tpr = _roc(fps, tps)
        return float(np.trapezoid(tpr, fpr))

    def _counts(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative weighted (fps, tps) at each distinct score, highest first, as
        metrics._clf_counts. A score none of whose rows was drawn is no point of this
        resample's ROC (it would change which points count as collinear)."""
        per_score, fakes = w, w * self.y
        if self.tied:
            per_score = np.add.reduceat(per_score, self.starts)
            fakes = np.add.reduceat(fakes, self.starts)
        drawn = np.flatnonzero(per_score)
        tps = np.cumsum(fakes[drawn])
        return np.cumsum(per_score[drawn]) - tps, tps


def _ranking(fps: np.ndarray, tps: np.ndarray) -> dict[str, float]:
    """auc, eer, ap from cumulative counts: the same expressions as metrics.roc_auc,
    eer_point and average_precision, in the same order, so that unit weights reproduce
    binary_metrics to the last bit."""
    fpr, tpr = _roc(fps, tps)
    auc = float(np.trapezoid(tpr, fpr))
    eer = float(fpr[int(np.nanargmin(np.abs((1.0 - tpr) - fpr)))])
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]])
    ap = float(-np.sum(np.diff(recall) * precision[:-1]))
    return {"auc": auc, "eer": eer, "ap": ap}


def _roc(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) with sklearn's drop_intermediate rule, as metrics.roc_curve."""
    if fps.shape[0] > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.concatenate([[True], corner, [True]]))
        fps, tps = fps[keep], tps[keep]
    fps = np.concatenate([[0.0], fps])
    tps = np.concatenate([[0.0], tps])
    return fps / fps[-1], tps / tps[-1]


def weighted_metrics(
    labels: Any, scores: Any, weights: Any, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """auc, eer, ap, acc (at 0.5) and acc_at_threshold with integer row ``weights`` (how often
    each row counts): equal to :func:`binary_metrics` on the rows repeated that often.

    The bootstrap's own computation, public so that tests can hold it against binary_metrics.
    """
    y, s = check_inputs(labels, scores)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != y.shape[0] or np.any(w < 0) or w.sum() <= 0:
        raise DataError("weights must be one non-negative number per row, not all 0")
    ranked = _SortedScores(y, s, check_threshold(threshold))
    return ranked.metrics(w[ranked.order])


# -- stratified (cluster) resampling ----------------------------------------------------------


class _Resampler:
    """Draws resamples as per-cluster counts: within each class stratum, as many clusters as
    the stratum holds, uniformly with replacement. A row's weight is its cluster's count."""

    def __init__(self, y: np.ndarray, clusters: Sequence[Any] | None) -> None:
        if clusters is None:
            self.of_row = np.arange(y.size)
        else:
            keys = np.asarray([str(c) for c in clusters], dtype=object)
            if keys.shape[0] != y.shape[0]:
                raise DataError(
                    f"clusters has {keys.shape[0]} entries but there are {y.shape[0]} rows"
                )
            _, self.of_row = np.unique(keys, return_inverse=True)
        self.n_clusters = int(self.of_row.max()) + 1
        fakes = np.bincount(self.of_row, weights=y.astype(np.float64), minlength=self.n_clusters)
        rows = np.bincount(self.of_row, minlength=self.n_clusters)
        # a cluster mixing labels goes with its majority (a tie counts as fake)
        fake_cluster = fakes * 2 >= rows
        self.strata = [np.flatnonzero(~fake_cluster), np.flatnonzero(fake_cluster)]
        self.strata = [s for s in self.strata if s.size]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        counts = np.zeros(self.n_clusters, dtype=np.float64)
        for members in self.strata:
            picked = rng.integers(0, members.size, members.size)
            counts[members] = np.bincount(picked, minlength=members.size)
        return counts


def _interval(values: np.ndarray, level: float) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"low": math.nan, "high": math.nan}
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return {"low": float(low), "high": float(high)}


def _check_settings(n: int, level: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"bootstrap resamples must be a whole number >= 0, got {n!r}")
    if not 0.0 < float(level) < 1.0:
        raise DataError(f"confidence level must be strictly between 0 and 1, got {level!r}")


def bootstrap_intervals(
    labels: Any,
    scores: Any,
    threshold: float,
    clusters: Sequence[Any] | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Percentile bootstrap intervals of auc, eer, ap, acc (at 0.5) and acc_at_threshold.

    ``clusters`` (e.g. the video id of every row): whole clusters are resampled; None: rows.
    Either way stratified by class. Returns ``{metric: {"low", "high"}}`` plus ``n_resamples``
    (resamples holding both classes, those the ranking intervals come from), ``resampled``
    ("videos" with clusters, else "rows"), ``n_clusters``, ``seed`` and ``level``; None when
    ``n`` is 0. Intervals are NaN when the data hold one class only (ACC's excepted).
    """
    _check_settings(n, level)
    if n == 0:
        return None
    y, s = check_inputs(labels, scores)
    ranked = _SortedScores(y, s, check_threshold(threshold))
    resampler = _Resampler(y, clusters)
    of_sorted = resampler.of_row[ranked.order]
    rng = np.random.default_rng(seed)
    both = 0 < int(y.sum()) < y.size
    values = {k: np.empty(n) for k in METRICS}
    for b in range(n):
        w = resampler.draw(rng)[of_sorted]
        for key, value in ranked.metrics(w, ranking=both).items():
            values[key][b] = value
    report: dict[str, Any] = {k: _interval(values[k], level) for k in METRICS}
    report.update(
        n_resamples=int(np.isfinite(values["auc"]).sum()),
        resampled="videos" if clusters is not None else "rows",
        n_clusters=resampler.n_clusters,
        seed=int(seed),
        level=float(level),
    )
    return report


# -- comparing two detectors on the same data -------------------------------------------------


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts + 1) / 2.0)[inverse]


def _delong_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(auc, V10 per fake, V01 per real): the structural components of DeLong et al. (1988),
    from midranks (Sun & Xu 2014) instead of comparing every fake with every real."""
    fake, real = s[y == 1], s[y == 0]
    m, k = fake.size, real.size
    combined = _midranks(np.concatenate([fake, real]))
    # a fake's rank among all minus its rank among fakes = reals below it (ties count 1/2)
    v10 = (combined[:m] - _midranks(fake)) / k
    v01 = 1.0 - (combined[m:] - _midranks(real)) / m
    return float(v10.mean()), v10, v01


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> tuple[float, float]:
    """DeLong's test that two detectors scored on the same rows have equal AUC: (z, two-sided
    p). z > 0 when a's AUC is higher. Identical AUCs with zero variance give (0, 1)."""
    y, a = check_inputs(labels, scores_a)
    _, b = check_inputs(labels, scores_b)
    if a.size != b.size:
        raise DataError(f"the two score lists differ in length: {a.size} vs {b.size}")
    m, k = int(y.sum()), int(y.size - y.sum())
    if m < 2 or k < 2:
        raise DataError("DeLong's test needs at least two real and two fake samples")
    auc_a, v10_a, v01_a = _delong_components(y, a)
    auc_b, v10_b, v01_b = _delong_components(y, b)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    cov = s10 / m + s01 / k
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = auc_a - auc_b
    if var <= 1e-300:
        # the two rankings agree completely: no evidence of a difference unless the AUCs differ
        return (0.0, 1.0) if abs(diff) < 1e-15 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return float(z), float(math.erfc(abs(z) / math.sqrt(2.0)))


def paired_auc_difference(
    labels: Any,
    scores_a: Any,
    scores_b: Any,
    clusters: Sequence[Any] | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """AUC of detector a minus that of b on the same data, with a paired bootstrap interval
    (each resample draws the same videos, or rows, for both) and DeLong's test on the rows.

    ``p_value`` is two-sided from the bootstrap: twice the smaller share of resamples on either
    side of 0 (with the usual +1 so it is never 0), capped at 1. With ``n`` 0 the bootstrap
    fields are None and only DeLong's test speaks; with fewer than two samples of a class,
    DeLong's fields are NaN.
    """
    _check_settings(n, level)
    y, a = check_inputs(labels, scores_a)
    _, b = check_inputs(labels, scores_b)
    if a.size != b.size:
        raise DataError(f"the two score lists differ in length: {a.size} vs {b.size}")
    if not 0 < int(y.sum()) < y.size:
        raise DataError("comparing AUCs needs both real and fake samples")
    ranked_a = _SortedScores(y, a, DEFAULT_THRESHOLD)
    ranked_b = _SortedScores(y, b, DEFAULT_THRESHOLD)
    ones = np.ones(y.size)
    auc_a, auc_b = ranked_a.auc(ones), ranked_b.auc(ones)
    if min(int(y.sum()), int(y.size - y.sum())) >= 2:
        delong_z, delong_p = delong_test(y, a, b)
    else:  # DeLong's variance needs two of each class; the bootstrap still speaks
        delong_z = delong_p = math.nan
    out: dict[str, Any] = {
        "auc_a": auc_a, "auc_b": auc_b, "diff": auc_a - auc_b,
        "low": None, "high": None, "p_value": None,
        "delong_z": delong_z, "delong_p": delong_p,
        "n_resamples": 0, "resampled": "videos" if clusters is not None else "rows",
    }
    if n == 0:
        return out
    resampler = _Resampler(y, clusters)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n)
    for i in range(n):
        counts = resampler.draw(rng)[resampler.of_row]
        diffs[i] = ranked_a.auc(counts[ranked_a.order]) - ranked_b.auc(counts[ranked_b.order])
    # a resample can lack a class only when clusters mix labels; it says nothing then
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return out
    below = (1 + int(np.sum(diffs <= 0))) / (diffs.size + 1)
    above = (1 + int(np.sum(diffs >= 0))) / (diffs.size + 1)
    out.update(_interval(diffs, level), p_value=min(1.0, 2.0 * min(below, above)),
               n_resamples=int(diffs.size))
    return out


__all__ = ["bootstrap_intervals", "delong_test", "paired_auc_difference", "weighted_metrics"]
