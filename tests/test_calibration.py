"""Calibration: ECE / Brier by hand, temperature fitting, the calibrate command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_dataset, tiny_config
from deepfake_detect.cli import app
from deepfake_detect.config import load_config
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import DataError
from deepfake_detect.calibration.temperature import (
    T_MAX,
    T_MIN,
    binary_nll,
    calibrated_threshold,
    fit_temperature,
    scaled_probabilities,
    score_fake_logits,
    select_calibration_split,
)
from deepfake_detect.evaluation.metrics import (
    binary_metrics,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)
from deepfake_detect.models.checkpoint import export_safetensors, load_detector, read_checkpoint
from deepfake_detect.training.train import train

runner = CliRunner()

# ---------------------------------------------------------------- ECE, Brier, reliability


def test_ece_and_brier_hand_values() -> None:
    y = [0, 1, 1, 0]
    s = [0.1, 0.9, 0.62, 0.65]
    # 15 bins of width 1/15: 0.1 -> bin 1, 0.9 -> bin 13, 0.62 and 0.65 -> bin 9 (0.6, 0.667]
    # gaps: |0 - 0.1| * 1/4 + |1 - 0.9| * 1/4 + |0.5 - 0.635| * 2/4
    assert expected_calibration_error(y, s) == pytest.approx(0.025 + 0.025 + 0.0675)
    assert expected_calibration_error(y, s, bins=1) == pytest.approx(abs(0.5 - 0.5675))
    assert brier_score(y, s) == pytest.approx((0.01 + 0.01 + 0.38**2 + 0.65**2) / 4)
    curve = reliability_curve(y, s)
    assert curve["count"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0]
    assert curve["frequency"][9] == pytest.approx(0.5)
    assert curve["confidence"][9] == pytest.approx(0.635)
    assert np.isnan(curve["frequency"][0]) and curve["edges"].size == 16


def test_ece_bin_edges_and_extremes() -> None:
    # right-closed bins: 0.5 sits in the lower of two bins, 0 in the first, 1 in the last
    curve = reliability_curve([0, 1, 1], [0.0, 0.5, 1.0], bins=2)
    assert curve["count"].tolist() == [2, 1]
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert expected_calibration_error([0, 1], [1.0, 0.0]) == 1.0
    assert brier_score([0, 1], [1.0, 0.0]) == 1.0
    # calibrated in expectation: each bin's fake rate equals its score
    y = np.r_[np.zeros(8), np.ones(2), np.zeros(2), np.ones(8)]
    s = np.r_[np.full(10, 0.2), np.full(10, 0.8)]
    assert expected_calibration_error(y, s) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError, match="bins"):
        expected_calibration_error(y, s, bins=0)


def test_binary_metrics_reports_ece_and_brier_and_keeps_old_keys() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    m = binary_metrics(y, s, threshold=0.4)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, s))
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))
    assert set(m) >= {"auc", "eer", "ap", "acc", "acc_at_threshold", "threshold", "precision",
                      "recall", "f1", "f1_real", "macro_f1", "balanced_acc", "confusion", "n",
                      "n_real", "n_fake", "warnings"}
    one_class = binary_metrics([1, 1], [0.8, 0.6])
    assert one_class["ece"] == pytest.approx(0.3) and one_class["brier"] == pytest.approx(0.1)


# ---------------------------------------------------------------- temperature


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t0: float) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 4.0, 20_000)  # observed fake logits
    labels = (rng.random(logits.size) < scaled_probabilities(logits, t0)).astype(int)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(t0, rel=0.1)
    # it is the NLL minimum: nearby temperatures do worse
    nll = binary_nll(logits, labels, t)
    assert nll < binary_nll(logits, labels, t * 1.1) and nll < binary_nll(logits, labels, t / 1.1)
    assert nll < binary_nll(logits, labels, 1.0)


def test_fit_temperature_edge_cases() -> None:
    # perfectly separated: NLL keeps falling with T -> the lower bound
    assert fit_temperature([-1.0, -2.0, 1.0, 2.0], [0, 0, 1, 1]) == T_MIN
    # scores pointing the wrong way: the flattest allowed scores
    assert fit_temperature([1.0, 2.0, -1.0, -2.0], [0, 0, 1, 1]) == T_MAX
    with pytest.raises(DataError, match="both real and fake"):
        fit_temperature([0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match="NaN"):
        fit_temperature([np.nan, 0.2], [0, 1])
    # saturated logits keep a finite NLL
    assert np.isfinite(binary_nll([-500.0, 500.0], [1, 0]))


def test_threshold_keep_preserves_decisions() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, 300)
    y = (z + rng.normal(0, 2, 300) > 0).astype(int)
    t_new = calibrated_threshold(z, y, 2.0, "keep", old_threshold=0.7, old_temperature=1.0)
    before = scaled_probabilities(z, 1.0) > 0.7
    after = scaled_probabilities(z, 2.0) > t_new
    assert np.array_equal(before, after)
    t_fpr = calibrated_threshold(z, y, 2.0, "fpr", target_fpr=0.05)
    p = scaled_probabilities(z, 2.0)
    assert np.mean(p[y == 0] > t_fpr) <= 0.05


def _toy_detector(num_classes: int):
    from deepfake_detect.models.registry import build_detector

    return build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32,
                           "num_classes": num_classes}).eval()


@pytest.mark.parametrize("num_classes", [1, 2])
def test_detector_temperature(num_classes: int) -> None:
    det = _toy_detector(num_classes)
    assert det.temperature == 1.0
    logits = torch.randn(16, num_classes) * 5
    plain = (torch.sigmoid(logits[:, 0]) if num_classes == 1
             else torch.softmax(logits, dim=1)[:, det.fake_index])
    assert torch.equal(det.probabilities(logits), plain)  # T = 1: bit-identical
    det.temperature = 2.5
    expected = torch.sigmoid(det.fake_logit(logits) / 2.5)
    torch.testing.assert_close(det.probabilities(logits), expected, rtol=1e-5, atol=1e-6)


def test_old_checkpoint_without_temperature_loads_with_one(tmp_path: Path) -> None:
    from deepfake_detect.models.checkpoint import checkpoint_meta

    det = _toy_detector(2)
    meta = checkpoint_meta(det, threshold=0.4)
    assert meta["temperature"] == 1.0
    del meta["temperature"]
    export_safetensors(det, tmp_path / "old.safetensors", meta)
    assert load_detector(tmp_path / "old.safetensors").temperature == 1.0
    meta["temperature"] = 1.7
    export_safetensors(det, tmp_path / "new.safetensors", meta)
    loaded = load_detector(tmp_path / "new.safetensors")
    assert loaded.temperature == 1.7 and loaded.threshold == 0.4


def test_auto_split_never_falls_back_to_test() -> None:
    def s(split):
        return Sample(path=Path("x.png"), label=0, video="v", split=split)

    assert [x.split for x in select_calibration_split([s("train"), s("val"), s("test")],
                                                      "auto", "d")] == ["val"]
    assert len(select_calibration_split([s(None), s(None)], "auto", "d")) == 2
    with pytest.raises(DataError, match="no 'val' split"):
        select_calibration_split([s("train"), s("test")], "auto", "d")
    with pytest.raises(DataError, match="leak"):
        select_calibration_split([s("test")], "test", "d")


# ---------------------------------------------------------------- calibrate command


OVERCONFIDENCE = 8.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(over-confident checkpoint, toy dataset with splits, noisy validation folder)."""
    tmp = tmp_path_factory.mktemp("calib")
    data = make_dataset(tmp / "toy", splits=("train", "val", "test"))
    result = train(load_config(base=tiny_config(data, tmp / "runs")), out=tmp / "run")
    # The tiny model is under-confident on the toy task; its head scaled up gives logits 8x too
    # large: an over-confident detector with the same ranking.
    det = load_detector(result.run_dir / "model.safetensors")
    with torch.no_grad():
        for p in det.head.parameters():
            p.mul_(OVERCONFIDENCE)
    ckpt = export_safetensors(det, tmp / "overconfident.safetensors", det.checkpoint_meta)
    # Validation data without splits and with a few wrong labels: not separable, so the
    # fitted temperature is finite and (for an over-confident model) above 1.
    noisy = make_dataset(tmp / "noisy", seed=1)
    for a, b in (("real", "fake"), ("fake", "real")):
        for p in sorted((noisy / a).glob("*.png"))[:3]:
            p.rename(noisy / b / f"flipped_{p.name}")
    return ckpt, data, noisy


def _samples(folder: Path) -> list[Sample]:
    return [Sample(path=p, label=int(p.parent.name == "fake"), video=p.stem)
            for p in sorted(folder.rglob("*.png"))]


def test_calibrate_writes_checkpoint_and_predict_applies_it(trained, tmp_path) -> None:
    ckpt, data, noisy = trained
    out = tmp_path / "cal" / "calibrated.safetensors"
    # --split auto on a folder without splits: every sample
    result = runner.invoke(app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(noisy),
                                 "--out", str(out), "--workers", "0", "--threshold-strategy",
                                 "max_acc"])
    assert result.exit_code == 0, result.output
    assert "nll" in result.output and "temperature" in result.output
    meta, _ = read_checkpoint(out)
    report = json.loads((out.parent / "calibration.json").read_text())
    t, threshold = meta.temperature, meta.threshold
    assert t == pytest.approx(report["temperature"])
    assert 1.0 < t < 100.0  # over-confident: the scores are softened, not at a bound
    assert 0 < threshold < 1 and threshold == pytest.approx(report["threshold"])
    cal = meta.calibration
    assert cal["n"] == 36 and cal["threshold_strategy"] == "max_acc" and not cal["notes"]
    assert cal["nll_after"] < cal["nll_before"]
    # ECE on 36 samples in 15 bins is too coarse to be sure to fall: only recorded
    assert {"ece_before", "ece_after", "brier_before", "brier_after", "data", "split"} <= set(cal)

    # the NLL after is the minimum around the fitted T on the same validation logits
    original = load_detector(ckpt)
    z_val, y_val = score_fake_logits(original, _samples(noisy), num_workers=0, progress=False)
    assert cal["nll_after"] == pytest.approx(binary_nll(z_val, y_val, t))
    assert binary_nll(z_val, y_val, t) <= binary_nll(z_val, y_val, t * 1.2)
    assert binary_nll(z_val, y_val, t) <= binary_nll(z_val, y_val, t / 1.2)

    # predict with the calibrated checkpoint: sigmoid(fake logit / T) of the original
    test_samples = _samples(data / "test")
    z, _ = score_fake_logits(original, test_samples, num_workers=0, progress=False)
    preds = tmp_path / "p.json"
    result = runner.invoke(app, ["predict", "--checkpoint", str(out), str(data / "test"),
                                 "--json", str(preds), "--workers", "0", "--crops"])
    assert result.exit_code == 0, result.output
    # real/ and fake/ share file names: key by the whole path
    got = {Path(r["filename"]).resolve(): r for r in json.loads(preds.read_text())}
    expected = scaled_probabilities(z, t)
    for sample, p in zip(test_samples, expected):
        row = got[sample.path.resolve()]
        assert row["score"] == pytest.approx(p, abs=1e-5)
        assert row["label"] == int(row["score"] > threshold)


def test_calibrate_fpr_target_and_evaluate_reports_calibration(trained, tmp_path) -> None:
    ckpt, data, _ = trained
    out = tmp_path / "fpr.safetensors"
    result = runner.invoke(app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(data),
                                 "--split", "val", "--threshold-strategy", "fpr",
                                 "--target-fpr", "0.1", "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    meta, _ = read_checkpoint(out)
    assert meta.calibration["target_fpr"] == 0.1
    ev = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--data", str(data),
                                 "--split", "val", "--out", str(ev), "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((ev / "toy" / "metrics.json").read_text())
    frame = metrics["frame"]
    assert metrics["threshold"] == pytest.approx(meta.threshold)
    (tn, fp), _ = frame["confusion"]
    assert fp / (fp + tn) <= 0.1  # on the data the threshold was chosen on
    assert frame["ece"] == pytest.approx(meta.calibration["ece_after"], abs=1e-4)
    assert frame["brier"] == pytest.approx(meta.calibration["brier_after"], abs=1e-4)
    assert (ev / "toy" / "reliability.png").stat().st_size > 1000


def test_calibrate_refuses_the_test_split(trained, tmp_path) -> None:
    ckpt, data, _ = trained
    out = tmp_path / "x.safetensors"
    result = runner.invoke(app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(data),
                                 "--split", "test", "--out", str(out)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "leak" in str(result.exception)
    assert not out.exists()
