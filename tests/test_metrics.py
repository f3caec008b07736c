"""Metrics, thresholds and video aggregation, checked against scikit-learn and brute force."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.calibration import STRATEGIES, choose_threshold, threshold_candidates
from deepfake_detect.evaluation import (
    AGGREGATORS,
    aggregate_videos,
    binary_metrics,
    metrics_to_json,
    predict_labels,
    roc_curve,
)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Both classes present; many seeds round the scores to force ties, some are tiny."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 3, 5, 17, 64, 300]))
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    s = rng.random(n)
    if seed % 3 == 0:
        s = np.round(s, 1)  # heavy ties
    elif seed % 3 == 1:
        s = np.clip(s + 0.4 * y - 0.2, 0, 1)  # informative, with exact 0/1 ties at the clip
    return y, s


def _sk_eer(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr, _ = skm.roc_curve(y, s, pos_label=1)
    return float(fpr[np.nanargmin(np.abs((1 - tpr) - fpr))])


SEEDS = range(60)


@pytest.mark.parametrize("seed", SEEDS)
def test_metrics_match_sklearn(seed: int) -> None:
    y, s = _random_case(seed)
    thr = 0.3 + 0.4 * (seed % 5) / 4
    m = binary_metrics(y, s, threshold=thr)
    pred = (s > thr).astype(int)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m["eer"] == _sk_eer(y, s)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, (s > 0.5).astype(int)))
    assert m["acc_at_threshold"] == pytest.approx(skm.accuracy_score(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on zero division; we return 0 like it
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert m["f1_real"] == pytest.approx(skm.f1_score(1 - y, 1 - pred, zero_division=0))
        assert m["macro_f1"] == pytest.approx(
            skm.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)
        )
        assert m["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert (m["n"], m["n_real"], m["n_fake"]) == (len(y), int((y == 0).sum()), int(y.sum()))
    assert m["warnings"] == []


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_curve_matches_sklearn(seed: int) -> None:
    y, s = _random_case(seed)
    for drop in (True, False):
        ours = roc_curve(y, s, drop_intermediate=drop)
        ref = skm.roc_curve(y, s, pos_label=1, drop_intermediate=drop)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)


def test_drop_intermediate_changes_eer_argmin() -> None:
    """Guard that the collinear-point dropping is what makes EER match DeepfakeBench."""
    found = 0
    for seed in range(400):
        y, s = _random_case(seed)
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        full = fpr[np.nanargmin(np.abs((1 - tpr) - fpr))]
        if full != _sk_eer(y, s):
            found += 1
            assert binary_metrics(y, s)["eer"] == _sk_eer(y, s)
    assert found > 0


def test_eer_brute_force() -> None:
    """EER by enumerating every threshold, keeping the ROC corners (sklearn drops points inside a
    straight run, which is what DeepfakeBench's argmin sees) and taking the first least gap."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.permutation(n) / n  # distinct scores: each step is one sample, up or right
        points = []
        for t in np.r_[np.inf, np.sort(s)[::-1]]:
            pred = s >= t
            points.append((pred[y == 0].mean(), pred[y == 1].mean()))
        steps = [y[np.argsort(-s)][i] for i in range(n)]  # 1: up (fake), 0: right (real)
        corners = [0] + [i for i in range(1, n) if steps[i - 1] != steps[i]] + [n]
        gaps = [abs((1 - points[i][1]) - points[i][0]) for i in corners]
        expected = points[corners[int(np.argmin(gaps))]][0]
        assert binary_metrics(y, s)["eer"] == pytest.approx(expected, abs=1e-12), seed


def test_perfect_inverted_and_n2() -> None:
    y = np.array([0, 0, 1, 1])
    good = binary_metrics(y, [0.1, 0.2, 0.8, 0.9])
    assert (good["auc"], good["eer"], good["ap"], good["acc"]) == (1.0, 0.0, 1.0, 1.0)
    bad = binary_metrics(y, [0.9, 0.8, 0.2, 0.1])
    assert bad["auc"] == 0.0 and bad["eer"] == 1.0 and bad["acc"] == 0.0
    assert bad["ap"] == pytest.approx(skm.average_precision_score(y, [0.9, 0.8, 0.2, 0.1]))
    two = binary_metrics([1, 0], [0.7, 0.7])
    assert two["auc"] == 0.5 and two["eer"] == _sk_eer(np.array([1, 0]), np.array([0.7, 0.7]))
    assert two["confusion"] == [[0, 1], [0, 1]]


def test_threshold_convention_is_strict() -> None:
    """DeepfakeBench: fake when score > 0.5; a score of exactly 0.5 is real."""
    np.testing.assert_array_equal(predict_labels([0.5, 0.5000001, 0.2, 1.0], 0.5), [0, 1, 0, 1])
    m = binary_metrics([0, 1], [0.5, 0.5])
    assert m["acc"] == 0.5 and m["confusion"] == [[1, 0], [1, 0]]


def test_input_types_and_tensors() -> None:
    y, s = _random_case(7)
    ref = binary_metrics(y, s)
    as_list = binary_metrics(y.tolist(), s.tolist())
    as_torch = binary_metrics(torch.tensor(y), torch.tensor(s, dtype=torch.float64).reshape(-1, 1))
    bools = binary_metrics(y.astype(bool), s)
    for other in (as_list, as_torch, bools):
        assert other == ref


def test_single_class_is_nan_with_warning_and_json_null() -> None:
    m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["eer"]) and math.isnan(m["ap"])
    assert m["warnings"] and "only fake" in m["warnings"][0]
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["balanced_acc"] == pytest.approx(2 / 3)
    text = json.dumps(metrics_to_json(m), allow_nan=False)
    assert json.loads(text)["auc"] is None


@pytest.mark.parametrize(
    ("labels", "scores", "fragment"),
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "length"),
        ([0, 2], [0.1, 0.2], "0 (real) or 1 (fake)"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1], [-0.5, 2.0], "[0, 1]"),
    ],
)
def test_bad_inputs_raise_data_error(labels, scores, fragment) -> None:
    with pytest.raises(DataError, match=None) as err:
        binary_metrics(labels, scores)
    assert fragment in str(err.value)


def test_bad_threshold() -> None:
    for bad in (0.0, 1.0, -1, "x", float("nan")):
        with pytest.raises(DataError, match="threshold"):
            binary_metrics([0, 1], [0.1, 0.9], threshold=bad)


def test_no_sklearn_or_torch_at_import() -> None:
    code = (
        "import sys, deepfake_detect.evaluation as e, deepfake_detect.calibration as c; "
        "e.binary_metrics([0,1],[0.2,0.8]); c.choose_threshold([0,1],[0.2,0.8],'eer'); "
        "bad=[m for m in ('sklearn','torch','matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- thresholds


def _metric_at(y: np.ndarray, s: np.ndarray, t: float, key: str) -> float:
    return binary_metrics(y, s, threshold=t)[key]


@pytest.mark.parametrize("seed", range(30))
def test_threshold_strategies_are_optimal(seed: int) -> None:
    y, s = _random_case(seed)
    cands, tp, fp = threshold_candidates(y, s)
    assert np.all((cands > 0) & (cands < 1))
    assert np.all(np.diff(cands) < 0)
    # candidate counts are what predict_labels gives at that threshold
    for t, a, b in zip(cands, tp, fp):
        pred = predict_labels(s, t)
        assert (int(pred[y == 1].sum()), int(pred[y == 0].sum())) == (a, b)
    probes = np.r_[cands, np.linspace(0.01, 0.99, 25)]
    goals = (("max_acc", "acc_at_threshold"), ("max_f1", "f1"), ("max_macro_f1", "macro_f1"))
    for strategy, key in goals:
        t = choose_threshold(y, s, strategy)
        assert 0 < t < 1
        best = _metric_at(y, s, t, key)
        assert all(best >= _metric_at(y, s, p, key) - 1e-12 for p in probes), strategy
        assert choose_threshold(y, s, strategy) == t  # deterministic


@pytest.mark.parametrize("seed", range(30))
def test_eer_threshold_reproduces_eer_point(seed: int) -> None:
    y, s = _random_case(seed)
    t = choose_threshold(y, s, "eer")
    assert 0 < t < 1
    m = binary_metrics(y, s, threshold=t)
    (tn, fp), (fn, tp) = m["confusion"]
    fpr = fp / (fp + tn)
    fnr = fn / (fn + tp)
    fpr_r, tpr_r, _ = skm.roc_curve(y, s)
    best_gap = np.nanmin(np.abs((1 - tpr_r) - fpr_r))
    if s.min() > 0 and s.max() < 1:  # every ROC point is reachable inside (0, 1)
        assert fpr == pytest.approx(m["eer"])
        assert abs(fnr - fpr) == pytest.approx(best_gap)


def test_threshold_ties_prefer_half_and_midpoints() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])
    # every threshold in (0.2, 0.8) is perfect: the candidate there is the midpoint 0.5
    assert choose_threshold(y, s, "max_acc") == pytest.approx(0.5)
    assert choose_threshold(y, s, "eer") == pytest.approx(0.5)
    s2 = np.array([0.1, 0.2, 0.3, 0.4])
    assert choose_threshold(y, s2, "max_acc") == pytest.approx(0.25)


def test_threshold_fixed_and_errors() -> None:
    assert choose_threshold(None, None, "fixed", 0.7) == 0.7
    with pytest.raises(DataError):
        choose_threshold(None, None, "fixed", 1.5)
    with pytest.raises(ConfigError, match="eval.threshold.strategy"):
        choose_threshold([0, 1], [0.1, 0.9], "youden")
    with pytest.raises(DataError, match="only real"):
        choose_threshold([0, 0], [0.1, 0.9], "max_f1")
    assert set(STRATEGIES) == {"fixed", "eer", "max_acc", "max_f1", "max_macro_f1", "fpr"}
    with pytest.raises(ConfigError, match="false-positive rate"):
        choose_threshold([0, 1], [0.1, 0.9], "fpr", 1.5)


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("target", [0.0, 0.05, 0.2, 0.5])
def test_fpr_threshold_is_lowest_within_target(seed: int, target: float) -> None:
    y, s = _random_case(seed)
    t = choose_threshold(y, s, "fpr", target)
    assert 0 < t < 1

    def fpr(th: float) -> float:
        return float(np.mean(predict_labels(s[y == 0], th)))

    if s[y == 0].max() < 1.0:  # a real at exactly 1.0 can never be excluded
        assert fpr(t) <= target
    # the next lower candidate breaks the target: t is the lowest threshold within it
    cands, _, _ = threshold_candidates(y, s)
    lower = cands[cands < t]
    if lower.size and fpr(t) <= target:
        assert fpr(lower.max()) > target


def test_fpr_threshold_hand_case() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9])
    assert choose_threshold(y, s, "fpr", 0.0) == pytest.approx(0.75)  # above the real at 0.7
    assert choose_threshold(y, s, "fpr", 0.25) == pytest.approx(0.35)  # one real (0.7) allowed
    assert choose_threshold(y, s, "fpr", 0.5) == pytest.approx(0.25)


def test_threshold_extreme_scores_stay_inside_unit_interval() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.0, 1.0, 0.0, 1.0])
    for strategy in STRATEGIES[1:]:
        t = choose_threshold(y, s, strategy)
        assert 0 < t < 1
        assert binary_metrics(y, s, t)["acc_at_threshold"] == 1.0


# ---------------------------------------------------------------- aggregation


def test_aggregate_groups_by_exact_id() -> None:
    videos = ["ff/real/000", "celeb/fake/000", "ff/real/000", "celeb/fake/000", "000"]
    labels = [0, 1, 0, 1, 1]
    scores = [0.1, 0.9, 0.3, 0.5, 0.4]
    ids, vl, vs = aggregate_videos(videos, labels, scores)
    assert ids == ["ff/real/000", "celeb/fake/000", "000"]
    np.testing.assert_array_equal(vl, [0, 1, 1])
    np.testing.assert_allclose(vs, [0.2, 0.7, 0.4])
    _, _, vmax = aggregate_videos(videos, labels, scores, how="max")
    np.testing.assert_allclose(vmax, [0.3, 0.9, 0.4])
    _, _, vmed = aggregate_videos(videos + ["000"], labels + [1], scores + [0.6], how="median")
    np.testing.assert_allclose(vmed, [0.2, 0.7, 0.5])
    assert {"mean", "max", "median"} <= set(AGGREGATORS)


def test_sbi_aggregation_takes_max_face_per_frame() -> None:
    # frame 0 has faces 0.2 and 0.8, frame 1 has 0.4: (0.8 + 0.4) / 2, not the mean of three
    _, _, vs = aggregate_videos(
        ["v", "v", "v"], [1, 1, 1], [0.2, 0.8, 0.4], how="sbi", frames=["v/0", "v/0", "v/1"]
    )
    np.testing.assert_allclose(vs, [0.6])
    _, _, mean = aggregate_videos(["v"] * 3, [1] * 3, [0.2, 0.8, 0.4], how="sbi")
    np.testing.assert_allclose(mean, [np.mean([0.2, 0.8, 0.4])])  # no frame ids: plain mean


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # 14 of 20 above 0.8 (> 20 / 2.5 = 8 and > 11): mean of the confident fakes
        ([0.9] * 14 + [0.1] * 6, 0.9),
        # 12 of 32 above 0.8 is not more than 32 / 2.5 = 12.8: falls through to the plain mean
        ([0.95] * 12 + [0.5] * 20, (0.95 * 12 + 0.5 * 20) / 32),
        # only 11 above: not more than 11, plain mean
        ([0.9] * 11 + [0.85] * 0 + [0.5] * 4, (0.9 * 11 + 0.5 * 4) / 15),
        # 19 of 20 below 0.2 (> 0.9 n): mean of the confident reals
        ([0.1] * 19 + [0.7], 0.1),
        # 18 of 20 below 0.2 is not more than 18: plain mean
        ([0.1] * 18 + [0.7, 0.7], (0.1 * 18 + 1.4) / 20),
    ],
)
def test_confident_strategy(scores: list[float], expected: float) -> None:
    _, _, vs = aggregate_videos(["v"] * len(scores), [1] * len(scores), scores, how="confident")
    np.testing.assert_allclose(vs, [expected])


def test_aggregate_mixed_labels_names_video() -> None:
    with pytest.raises(DataError, match="'a/001'"):
        aggregate_videos(["a/001", "a/001", "b/001"], [0, 1, 1], [0.1, 0.2, 0.3])


def test_aggregate_errors() -> None:
    with pytest.raises(ConfigError, match="video_aggregation"):
        aggregate_videos(["a"], [0], [0.1], how="mode")
    with pytest.raises(DataError, match="length"):
        aggregate_videos(["a", "b"], [0], [0.1])
    with pytest.raises(DataError):
        aggregate_videos([], [], [])


def test_video_metrics_pipeline() -> None:
    rng = np.random.default_rng(0)
    videos = [f"v{i // 4}" for i in range(40)]
    labels = [int(v[1:]) % 2 for v in videos]
    scores = np.clip(rng.random(40) * 0.6 + 0.35 * np.array(labels), 0, 1)
    ids, vl, vs = aggregate_videos(videos, labels, scores)
    m = binary_metrics(vl, vs)
    assert m["n"] == 10 and len(ids) == 10
    assert m["auc"] == pytest.approx(skm.roc_auc_score(vl, vs))
