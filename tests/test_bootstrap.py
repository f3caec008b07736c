"""Bootstrap intervals (videos resampled, stratified), the paired AUC difference and DeLong."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.bootstrap import (
    METRICS,
    bootstrap_intervals,
    delong_test,
    paired_auc_difference,
    weighted_metrics,
)
from deepfake_detect.evaluation.metrics import binary_metrics


def _videos(n_videos: int, frames: int, rng: np.random.Generator, gap: float = 0.15):
    """Labels, scores and video ids of ``n_videos`` per class: each video has its own level
    (videos differ more than their frames do), fakes a little higher on average."""
    labels, scores, vids = [], [], []
    for label in (0, 1):
        for v in range(n_videos):
            level = rng.normal(0.4 + gap * label, 0.15)
            scores.append(np.clip(level + rng.normal(0, 0.05, frames), 0, 1))
            labels += [label] * frames
            vids += [f"{label}-{v}"] * frames
    return np.array(labels), np.concatenate(scores), vids


def _width(ci: dict, key: str = "auc") -> float:
    return ci[key]["high"] - ci[key]["low"]


# -- the weighted computation ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_unit_weights_reproduce_binary_metrics_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    # coarse rounding makes many ties (the ROC's drop_intermediate rule then matters)
    s = np.round(rng.random(n), int(rng.integers(1, 4)))
    t = float(rng.uniform(0.05, 0.95))
    expected = binary_metrics(y, s, threshold=t)
    got = weighted_metrics(y, s, np.ones(n), threshold=t)
    assert set(got) == set(METRICS)
    for key in METRICS:
        assert got[key] == expected[key], key  # bit for bit, not approximately


@pytest.mark.parametrize("seed", range(6))
def test_integer_weights_equal_repeated_rows(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(4, 200))
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n), 2)
    w = rng.integers(0, 4, n)  # 0: the row is left out, as a bootstrap resample may do
    w[np.flatnonzero(y == 0)[:1]] = 1
    w[np.flatnonzero(y == 1)[:1]] = 2
    t = 0.37
    expected = binary_metrics(np.repeat(y, w), np.repeat(s, w), threshold=t)
    got = weighted_metrics(y, s, w, threshold=t)
    for key in METRICS:
        assert got[key] == expected[key], key


def test_bad_weights_are_refused() -> None:
    with pytest.raises(DataError, match="weights"):
        weighted_metrics([0, 1], [0.2, 0.8], [1, -1])
    with pytest.raises(DataError, match="weights"):
        weighted_metrics([0, 1], [0.2, 0.8], [1])


# -- intervals --------------------------------------------------------------------------------


def test_interval_holds_the_estimate_and_reports_its_settings() -> None:
    rng = np.random.default_rng(0)
    y, s, vids = _videos(40, 8, rng)
    ci = bootstrap_intervals(y, s, 0.5, clusters=vids, n=500, seed=3)
    point = binary_metrics(y, s, threshold=0.5)
    for key in METRICS:
        assert ci[key]["low"] <= point[key] <= ci[key]["high"], key
        assert ci[key]["low"] < ci[key]["high"], key
    assert ci["n_resamples"] == 500 and ci["resampled"] == "videos"
    assert ci["n_clusters"] == 80 and ci["seed"] == 3 and ci["level"] == 0.95
    rows = bootstrap_intervals(y, s, 0.5, n=50)
    assert rows["resampled"] == "rows" and rows["n_clusters"] == y.size


def test_interval_is_reproducible_under_a_seed_and_differs_under_another() -> None:
    rng = np.random.default_rng(1)
    y, s, vids = _videos(30, 5, rng)
    a = bootstrap_intervals(y, s, 0.5, clusters=vids, n=300, seed=7)
    b = bootstrap_intervals(y, s, 0.5, clusters=vids, n=300, seed=7)
    c = bootstrap_intervals(y, s, 0.5, clusters=vids, n=300, seed=8)
    assert a == b
    assert a["auc"] != c["auc"]


def test_interval_narrows_with_more_videos() -> None:
    y10, s10, v10 = _videos(10, 6, np.random.default_rng(3))
    y200, s200, v200 = _videos(200, 6, np.random.default_rng(3))
    few = bootstrap_intervals(y10, s10, 0.5, clusters=v10, n=400)
    many = bootstrap_intervals(y200, s200, 0.5, clusters=v200, n=400)
    for key in ("auc", "ap", "eer", "acc"):
        assert _width(many, key) < 0.6 * _width(few, key), key


def test_videos_are_resampled_whole_not_their_frames() -> None:
    """Two videos per class, 500 frames of one score each. Frame resampling sees 1000
    independent rows per class and an interval of almost no width; with videos drawn whole,
    a resample may hold the same real video twice, and AUC swings between 0 and 1."""
    video_scores = {"r0": (0, 0.3), "r1": (0, 0.6), "f0": (1, 0.4), "f1": (1, 0.9)}
    vids = [v for v in video_scores for _ in range(500)]
    y = np.array([video_scores[v][0] for v in vids])
    s = np.array([video_scores[v][1] for v in vids])
    assert binary_metrics(y, s)["auc"] == pytest.approx(0.75)
    by_video = bootstrap_intervals(y, s, 0.5, clusters=vids, n=400, seed=0)
    by_row = bootstrap_intervals(y, s, 0.5, clusters=None, n=400, seed=0)
    assert _width(by_row) < 0.1  # what resampling frames would claim
    assert _width(by_video) > 0.4
    assert by_video["auc"]["low"] <= 0.5 and by_video["auc"]["high"] == 1.0
    assert by_video["n_clusters"] == 4 and by_video["resampled"] == "videos"


def test_every_resample_keeps_both_classes_and_mixed_clusters_are_allowed() -> None:
    # one real and one fake video: stratified draws always give AUC 1 (never undefined)
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])
    ci = bootstrap_intervals(y, s, 0.5, clusters=["a", "a", "b", "b"], n=50)
    assert ci["n_resamples"] == 50 and ci["auc"] == {"low": 1.0, "high": 1.0}
    # a cluster holding both labels goes with its majority
    mixed = bootstrap_intervals([0, 0, 1, 1, 0, 1, 1], [0.1, 0.4, 0.6, 0.7, 0.2, 0.9, 0.3],
                                0.5, clusters=["a", "a", "a", "b", "c", "c", "c"], n=100)
    assert 0 < mixed["n_resamples"] <= 100


def test_no_resamples_and_bad_settings() -> None:
    assert bootstrap_intervals([0, 1], [0.2, 0.8], 0.5, n=0) is None
    with pytest.raises(DataError, match="whole number"):
        bootstrap_intervals([0, 1], [0.2, 0.8], 0.5, n=-1)
    with pytest.raises(DataError, match="level"):
        bootstrap_intervals([0, 1], [0.2, 0.8], 0.5, n=10, level=1.5)
    with pytest.raises(DataError, match="clusters"):
        bootstrap_intervals([0, 1], [0.2, 0.8], 0.5, clusters=["a"], n=10)


def test_one_class_gives_undefined_ranking_intervals() -> None:
    ci = bootstrap_intervals([1, 1, 1], [0.2, 0.7, 0.9], 0.5, n=20)
    assert math.isnan(ci["auc"]["low"]) and ci["n_resamples"] == 0
    assert 0 <= ci["acc"]["low"] <= ci["acc"]["high"] <= 1


def test_scores_are_sorted_once_not_per_resample(monkeypatch) -> None:
    calls = {"n": 0}
    real_argsort, real_sort = np.argsort, np.sort

    def counting(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(np, "argsort", counting(real_argsort))
    monkeypatch.setattr(np, "sort", counting(real_sort))
    rng = np.random.default_rng(4)
    y, s, vids = _videos(20, 4, rng)
    bootstrap_intervals(y, s, 0.5, clusters=vids, n=200)
    assert calls["n"] <= 2


def test_a_thousand_resamples_of_100k_rows_take_seconds() -> None:
    rng = np.random.default_rng(5)
    n = 100_000
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1).astype(np.float32).astype(np.float64)
    vids = np.arange(n) // 32
    started = time.perf_counter()
    ci = bootstrap_intervals(y, s, 0.5, clusters=vids, n=1000)
    elapsed = time.perf_counter() - started
    assert ci["n_resamples"] == 1000
    assert elapsed < 30, f"{elapsed:.1f} s"  # a few seconds on one idle core


# -- comparing two detectors --------------------------------------------------------------------


def test_identical_detectors_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(6)
    y, s, vids = _videos(25, 4, rng)
    d = paired_auc_difference(y, s, s.copy(), clusters=vids, n=300)
    assert d["diff"] == 0.0 and d["low"] == 0.0 and d["high"] == 0.0
    assert d["p_value"] == 1.0 and d["delong_z"] == 0.0 and d["delong_p"] == 1.0
    assert d["auc_a"] == d["auc_b"] == pytest.approx(roc_auc_score(y, s))
    assert d["n_resamples"] == 300 and d["resampled"] == "videos"


def test_a_clearly_better_detector_is_told_apart() -> None:
    rng = np.random.default_rng(7)
    y, _, vids = _videos(60, 4, rng)
    good = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, y.size), 0, 1)
    poor = np.clip(0.45 + 0.1 * y + rng.normal(0, 0.2, y.size), 0, 1)
    d = paired_auc_difference(y, good, poor, clusters=vids, n=500, seed=1)
    assert d["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, poor))
    assert d["low"] > 0 and d["high"] > d["low"]
    assert d["p_value"] < 0.05 and d["delong_p"] < 0.05 and d["delong_z"] > 0
    swapped = paired_auc_difference(y, poor, good, clusters=vids, n=500, seed=1)
    assert swapped["diff"] == -d["diff"] and swapped["high"] < 0
    assert swapped["delong_z"] == pytest.approx(-d["delong_z"])


def test_similar_detectors_are_not_called_different() -> None:
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1], 150)
    a = np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, y.size), 0, 1)
    b = np.clip(a + rng.normal(0, 0.01, y.size), 0, 1)  # a's scores, barely perturbed
    d = paired_auc_difference(y, a, b, n=300)
    assert d["low"] < 0 < d["high"] or d["low"] == d["high"] == 0
    assert d["p_value"] > 0.05 and d["delong_p"] > 0.05


def test_paired_without_resamples_gives_delong_only() -> None:
    d = paired_auc_difference([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.9], [0.2, 0.1, 0.8, 0.7], n=0)
    assert d["low"] is None and d["p_value"] is None and d["n_resamples"] == 0
    assert 0 <= d["delong_p"] <= 1


def _delong_slow(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) written out: every fake compared with every real."""
    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fake, real = s[y == 1], s[y == 0]
        psi = (fake[:, None] > real[None, :]) + 0.5 * (fake[:, None] == real[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)  # V10 per fake, V01 per real

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    m, n = v10a.size, v01a.size

    def cov(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.sum((u - u.mean()) * (v - v.mean())) / (u.size - 1))

    var_a = cov(v10a, v10a) / m + cov(v01a, v01a) / n
    var_b = cov(v10b, v10b) / m + cov(v01b, v01b) / n
    cov_ab = cov(v10a, v10b) / m + cov(v01a, v01b) / n
    z = (v10a.mean() - v10b.mean()) / math.sqrt(var_a + var_b - 2 * cov_ab)
    p = 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))
    return z, p


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_the_direct_formulation(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    n = int(rng.integers(20, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    a = np.round(np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, n), 0, 1), 2)  # with ties
    b = np.clip(0.45 + 0.1 * y + rng.normal(0, 0.25, n), 0, 1)
    z, p = delong_test(y, a, b)
    z_slow, p_slow = _delong_slow(y, a, b)
    assert z == pytest.approx(z_slow, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(p_slow, rel=1e-6, abs=1e-12)


def test_delong_needs_two_of_each_class() -> None:
    with pytest.raises(DataError, match="two real and two fake"):
        delong_test([0, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.4, 0.8])
    # the paired comparison still gives its bootstrap interval, DeLong undefined
    d = paired_auc_difference([0, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.4, 0.8], n=20)
    assert math.isnan(d["delong_p"]) and d["diff"] == 0.0 and d["n_resamples"] == 20
