"""Ensembles: per-member preprocessing, the three voting methods, fitted weights, ensemble files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_dataset
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.calibration.ensemble import calibrate_ensemble, fit_weights
from deepfake_detect.inference.ensemble import (
    Ensemble,
    is_ensemble_file,
    load_model,
    parse_weights,
    read_ensemble_file,
    write_ensemble_file,
)
from deepfake_detect.inference.scoring import score_files
from deepfake_detect.models.checkpoint import checkpoint_meta, export_safetensors, load_detector
from deepfake_detect.models.registry import build_detector


def _member(path: Path, seed: int, input_size: int, num_classes: int = 2, mean=None,
            threshold: float = 0.5, temperature: float = 1.0) -> Path:
    torch.manual_seed(seed)
    cfg = {"name": "timm", "timm_name": "test_resnet", "input_size": input_size,
           "num_classes": num_classes}
    if mean is not None:
        cfg.update(mean=mean, std=(0.5, 0.5, 0.5))
    det = build_detector(cfg).eval()
    with torch.no_grad():  # spread the scores so that votes and weights matter
        for p in det.head.parameters():
            p.mul_(40.0)
    meta = checkpoint_meta(det, threshold=threshold)
    meta["temperature"] = temperature
    return export_safetensors(det, path, meta)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[list[Path], Path]:
    """Three checkpoints with different input sizes, normalisations, head shapes, thresholds
    and temperatures, and a labelled toy dataset."""
    tmp = tmp_path_factory.mktemp("ens")
    a = _member(tmp / "a" / "model.safetensors", 0, 32)
    b = _member(tmp / "b.safetensors", 1, 48, num_classes=1, mean=(0.5, 0.5, 0.5),
                threshold=0.3, temperature=2.0)
    c = _member(tmp / "c.safetensors", 2, 40, threshold=0.6)
    data = make_dataset(tmp / "toy", videos_per_class=4, frames=2)
    return [a, b, c], data


def _files(data: Path) -> list[Path]:
    return sorted(data.rglob("*.png"))


def _solo(path: Path, files, output=None) -> np.ndarray:
    return score_files(load_detector(path), files, num_workers=0, progress=False,
                       output=output).scores


def test_soft_vote_is_weighted_mean_of_members_with_own_preprocessing(members) -> None:
    paths, data = members
    files = _files(data)
    ens = load_model(paths, weights="2,1,1")
    assert isinstance(ens, Ensemble) and ens.method == "soft"
    assert [m.detector.input_size for m in ens.members] == [32, 48, 40]
    assert [m.name for m in ens.members] == ["a", "b", "c"]  # run folder for model.safetensors
    result = ens.score_files(files, num_workers=0, progress=False)
    solo = np.stack([_solo(p, files) for p in paths])
    np.testing.assert_allclose(result.members, solo, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.scores, 0.5 * solo[0] + 0.25 * solo[1] + 0.25 * solo[2],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.std, solo.std(axis=0, ddof=1), rtol=1e-6, atol=1e-7)
    assert solo.std() > 0.05  # the members really differ, so the check above means something


def test_logits_and_hard_votes(members) -> None:
    paths, data = members
    files = _files(data)
    dets = [load_detector(p) for p in paths]
    z = np.stack([_solo(p, files, output=lambda l, d=d: d.fake_logit(l.float()) / d.temperature)
                  for p, d in zip(paths, dets)])
    assert dets[1].temperature == 2.0
    logits = load_model(paths, method="logits").score_files(files, num_workers=0, progress=False)
    np.testing.assert_allclose(logits.scores, 1 / (1 + np.exp(-z.mean(0))), rtol=1e-5, atol=1e-6)

    hard = load_model(paths, method="hard", weights=[1, 1, 2]).score_files(
        files, num_workers=0, progress=False)
    p = 1 / (1 + np.exp(-z))
    votes = np.stack([p[i] > d.threshold for i, d in enumerate(dets)])  # own thresholds
    np.testing.assert_allclose(hard.scores, (votes * np.array([[0.25], [0.25], [0.5]])).sum(0),
                               atol=1e-9)
    assert set(np.round(hard.scores, 6)) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_unreadable_file_gets_nan_and_error(members, tmp_path) -> None:
    paths, data = members
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    files = [*_files(data)[:3], bad]
    result = load_model(paths[:2]).score_files(files, num_workers=0, progress=False)
    assert np.isnan(result.scores[3]) and np.isnan(result.std[3])
    assert np.isfinite(result.scores[:3]).all()
    assert set(result.errors) == {3} and result.errors[3]


def test_fit_weights_prefers_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.2 + 0.6 * y + rng.normal(0, 0.1, y.size), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, y.size)
    w, t = fit_weights(np.stack([noise, good]), y, "soft")
    assert t == 1.0 and w.sum() == pytest.approx(1.0)
    assert w[1] > 0.85

    def nll(p):
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    assert nll(w[0] * noise + w[1] * good) < nll(0.5 * noise + 0.5 * good)

    # logits: an informative but 5x over-confident member gets the weight and T absorbs the scale
    log_odds = rng.normal(0, 2, 2000)
    y2 = (rng.uniform(size=log_odds.size) < 1 / (1 + np.exp(-log_odds))).astype(int)
    z_noise = rng.normal(0, 3, log_odds.size)
    w, t = fit_weights(np.stack([5 * log_odds, z_noise]), y2, "logits")
    assert w[0] > 0.9 and 3.5 < t / w[0] < 7  # the true scale: 5
    with pytest.raises(ConfigError, match="hard voting"):
        fit_weights(np.stack([good, noise]), y, "hard")
    with pytest.raises(DataError, match="real and fake"):
        fit_weights(np.stack([good, noise]), np.ones_like(y), "soft")


def test_ensemble_file_round_trip_and_options(members, tmp_path) -> None:
    paths, data = members
    ens = load_model(paths, method="logits", weights="3,1,0")
    ens.threshold = 0.42
    out = write_ensemble_file(ens.config(), tmp_path / "sub" / "ens.yaml")
    raw = yaml.safe_load(out.read_text())["ensemble"]
    assert not Path(raw["members"][0]["checkpoint"]).is_absolute()  # moves with the checkpoints
    assert raw["method"] == "logits" and raw["threshold"] == 0.42
    assert is_ensemble_file(out) and not is_ensemble_file(paths[0])
    cfg = read_ensemble_file(out)
    assert [m.checkpoint.resolve() for m in cfg.members] == [p.resolve() for p in paths]
    again = load_model(out)
    assert again.method == "logits" and again.threshold == 0.42
    np.testing.assert_allclose(again.weights, [0.75, 0.25, 0.0])
    files = _files(data)[:4]
    np.testing.assert_allclose(again.score_files(files, num_workers=0, progress=False).scores,
                               ens.score_files(files, num_workers=0, progress=False).scores)


def test_bad_ensemble_input_is_refused(members, tmp_path) -> None:
    paths, _ = members
    with pytest.raises(ConfigError, match="one per checkpoint"):
        parse_weights("1,2", 3)
    with pytest.raises(ConfigError, match="not all 0"):
        parse_weights("0,0", 2)
    with pytest.raises(ConfigError, match="numbers"):
        parse_weights("1;2", 2)
    with pytest.raises(ConfigError, match="several --checkpoint"):
        load_model([paths[0]], weights="1")
    with pytest.raises(ConfigError, match="choose one of"):
        load_model(paths, method="median")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"ensemble": {"members": [{"checkpoint": "a.safetensors",
                                                             "wieght": 2}] * 2}}))
    with pytest.raises(ConfigError, match="wieght"):
        load_model(bad)
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({"ensemble": {"members": [{"checkpoint": str(paths[0])}]}}))
    with pytest.raises(ConfigError, match="members"):
        load_model(one)


def test_calibrate_ensemble_fits_weights_and_threshold(members, tmp_path) -> None:
    paths, _ = members
    val = make_dataset(tmp_path / "val", videos_per_class=6, frames=2, seed=3)
    out = tmp_path / "fitted" / "ensemble.yaml"
    result = calibrate_ensemble(paths, [val], out, threshold_strategy="max_acc",
                                num_workers=0, progress=False)
    assert result.fitted and result.n == 24 and result.n_real == 12
    assert sum(result.weights) == pytest.approx(1.0)
    assert result.after["nll"] <= result.before["nll"] + 1e-9  # the fit minimises it
    cfg = read_ensemble_file(out)
    assert [m.weight for m in cfg.members] == pytest.approx(result.weights)
    assert cfg.threshold == pytest.approx(result.threshold)
    assert cfg.calibration["fitted"] is True and (out.parent / "calibration.json").is_file()
    # the written file scores the validation data as the calibration saw it
    ens = load_model(out)
    samples = [Sample(p, int(p.parent.name == "fake"), p.stem) for p in sorted(val.rglob("*.png"))]
    scores = ens.score_files(samples, num_workers=0, progress=False).scores
    labels = np.array([s.label for s in samples])
    acc = np.mean((scores > cfg.threshold) == labels)
    best = max(np.mean((scores > t) == labels) for t in np.r_[scores, 0.0])
    assert acc == pytest.approx(best)  # max_acc: no threshold does better on this data
    # given weights are kept; hard voting is never fitted; the test split is refused
    kept = calibrate_ensemble(paths, [val], tmp_path / "k.yaml", weights="1,0,1",
                              num_workers=0, progress=False)
    assert not kept.fitted and kept.weights == pytest.approx([0.5, 0.0, 0.5])
    hard = calibrate_ensemble(paths, [val], tmp_path / "h.yaml", method="hard",
                              num_workers=0, progress=False)
    assert not hard.fitted and hard.notes
    with pytest.raises(DataError, match="leak"):
        calibrate_ensemble(paths, [val], tmp_path / "t.yaml", split="test")
    with pytest.raises(ConfigError, match="yaml"):
        calibrate_ensemble(paths, [val], tmp_path / "e.safetensors")


# ---------------------------------------------------------------- commands


def test_evaluate_and_calibrate_commands_with_an_ensemble(members, tmp_path) -> None:
    import csv
    import json

    from typer.testing import CliRunner

    from deepfake_detect.cli import app

    runner = CliRunner()
    paths, data = members
    ckpts = [a for p in paths[:2] for a in ("--checkpoint", str(p))]
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", *ckpts, "--weights", "3,1", "--data", str(data),
                                 "--out", str(out), "--workers", "0", "--no-plots"])
    assert result.exit_code == 0, result.output
    (metrics_path,) = out.glob("*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    ens = metrics["ensemble"]
    assert ens["method"] == "soft" and [m["weight"] for m in ens["members"]] == [0.75, 0.25]
    assert {"auc", "eer", "ap", "acc"} <= set(ens["members"][0]["frame"])
    with open(metrics_path.parent / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and {"score_std", "score_a", "score_b"} <= set(rows[0])
    for r in rows:  # the ensemble score is the weighted mean of the member columns
        assert float(r["score"]) == pytest.approx(
            0.75 * float(r["score_a"]) + 0.25 * float(r["score_b"]), abs=2e-6)
    run = json.loads((out / "run.json").read_text())
    assert len(run["checkpoint"]) == 2 and "ensemble" in (out / "config.yaml").read_text()

    # calibrate writes an ensemble file that evaluate takes as --checkpoint
    val = make_dataset(tmp_path / "val", videos_per_class=4, frames=2, seed=5)
    ens_file = tmp_path / "ens.yaml"
    result = runner.invoke(app, ["calibrate", *ckpts, "--data", str(val), "--out", str(ens_file),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "weight a" in result.output and ens_file.is_file()
    again = runner.invoke(app, ["evaluate", "--checkpoint", str(ens_file), "--data", str(data),
                                "--out", str(tmp_path / "eval2"), "--workers", "0", "--no-plots"])
    assert again.exit_code == 0, again.output
    (m2,) = (tmp_path / "eval2").glob("*/metrics.json")
    assert json.loads(m2.read_text())["threshold"] == pytest.approx(read_ensemble_file(ens_file).threshold)
    # options that do not fit an ensemble fail with the reason
    bad = runner.invoke(app, ["evaluate", *ckpts, "--mc-dropout", "4", "--data", str(data),
                              "--out", str(tmp_path / "e3"), "--workers", "0"])
    assert bad.exit_code != 0 and "ensemble" in str(bad.exception) + bad.output
    bad = runner.invoke(app, ["calibrate", "--checkpoint", str(paths[0]), "--weights", "1",
                              "--data", str(val), "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code != 0 and "several --checkpoint" in bad.output


def test_ensemble_scores_the_faces_of_photos_and_predict_writes_the_spread(members, shared,
                                                                            tmp_path) -> None:
    import csv

    from typer.testing import CliRunner

    from deepfake_detect.cli import app
    from deepfake_detect.inference.media_scoring import MediaScorer, prepare_settings
    from deepfake_detect.inference.predict import predict_files

    paths, data = members
    photo = shared / "media" / "faces" / "two_people.jpg"
    ens = load_model(paths[:2], weights="3,1")
    rows = predict_files(ens, [photo], detect_faces=True, device="cpu", progress=False,
                         select="largest")
    (row,) = rows
    assert row.faces == 1 and row.score is not None and row.score_std is not None  # largest face
    # the same crops scored by each member alone, combined by hand
    settings = prepare_settings(ens.primary)
    solo = [MediaScorer(load_detector(p), settings=settings, device="cpu").score(photo).score
            for p in paths[:2]]
    assert row.score == pytest.approx(0.75 * solo[0] + 0.25 * solo[1], abs=1e-6)
    assert row.score_std == pytest.approx(np.std(solo, ddof=1), abs=1e-6)

    crops = _files(data)[:3]
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(paths[0]), "--checkpoint",
                                      str(paths[2]), "--ensemble", "hard", "--crops", *map(str, crops),
                                      "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 3 and "score_std" in got[0]
    assert {float(r["score"]) for r in got} <= {0.0, 0.5, 1.0}  # two equal votes
