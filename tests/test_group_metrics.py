"""Metrics per group (each group's fakes against all reals) and the uncertainty evaluate reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from conftest import face_checkpoint, make_dataset
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.evaluate import (
    _summary,
    _video_groups,
    evaluate_samples,
    group_rows,
    summary_rows,
    threshold_origin,
)
from deepfake_detect.evaluation.groups import (
    GROUPS_CSV_COLUMNS,
    NO_GROUP,
    group_metrics,
    write_groups_csv,
)
from deepfake_detect.evaluation.plots import plot_group_metrics
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models.registry import build_detector

GROUPS = ("Deepfakes", "FaceSwap", "NeuralTextures")


def _table(rng: np.random.Generator, frames: int = 4):
    """Frames of 12 real videos and 6 fake videos per group; each group is a different
    difficulty (its fakes' scores sit closer to the reals')."""
    rows = []
    for v in range(12):
        level = rng.normal(0.35, 0.1)
        rows += [(0, float(np.clip(level + rng.normal(0, 0.05), 0, 1)), f"real/{v}", "youtube")
                 for _ in range(frames)]
    for shift, group in zip((0.4, 0.2, 0.05), GROUPS):
        for v in range(6):
            level = rng.normal(0.35 + shift, 0.1)
            rows += [(1, float(np.clip(level + rng.normal(0, 0.05), 0, 1)), f"{group}/{v}", group)
                     for _ in range(frames)]
    y, s, vids, groups = zip(*rows)
    return np.array(y), np.array(s), list(vids), list(groups)


def test_group_metrics_equal_sklearn_on_each_groups_fakes_against_all_reals() -> None:
    y, s, vids, groups = _table(np.random.default_rng(0))
    result = group_metrics(groups, y, s, 0.5, videos=vids, video_aggregation="mean", n_boot=200)
    assert list(result) == list(GROUPS)  # the reals' own group ("youtube") is no group
    for name in GROUPS:
        task = (y == 0) | (np.array(groups) == name)
        entry = result[name]
        assert (entry["n_real"], entry["n_fake"]) == (48, 24)
        frame = entry["frame"]
        assert frame["auc"] == pytest.approx(roc_auc_score(y[task], s[task]), abs=1e-12)
        assert frame["ap"] == pytest.approx(average_precision_score(y[task], s[task]), abs=1e-12)
        assert frame["acc"] == pytest.approx(np.mean((s[task] > 0.5) == y[task]))
        # the video level by hand: mean frame score per video
        task_vids = sorted({v for v, t in zip(vids, task) if t})
        vs = np.array([s[[i for i, v in enumerate(vids) if v == u]].mean() for u in task_vids])
        vy = np.array([0 if u.startswith("real/") else 1 for u in task_vids])
        video = entry["video"]
        assert video["n_videos"] == 18 and (video["n_real"], video["n_fake"]) == (12, 6)
        assert video["auc"] == pytest.approx(roc_auc_score(vy, vs), abs=1e-12)
        assert video["ap"] == pytest.approx(average_precision_score(vy, vs), abs=1e-12)
        for level in (frame, video):
            ci = level["ci"]
            assert ci["resampled"] == "videos" and ci["n_resamples"] == 200
            assert ci["auc"]["low"] <= level["auc"] <= ci["auc"]["high"]
        assert frame["ci"]["n_clusters"] == video["ci"]["n_clusters"] == 18
    # the groups are told apart: the easiest has the highest AUC
    assert result["Deepfakes"]["frame"]["auc"] > result["NeuralTextures"]["frame"]["auc"]


def test_samples_carry_their_group_and_ungrouped_fakes_are_listed() -> None:
    rows = [(0, None), (0, "youtube"), (1, "Deepfakes"), (1, None), (1, "Deepfakes")]
    samples = [Sample(Path(f"{i}.png"), label, f"v{i}", group=g)
               for i, (label, g) in enumerate(rows)]
    labels = [s.label for s in samples]
    scores = [0.1, 0.4, 0.9, 0.3, 0.7]
    result = group_metrics(samples, labels, scores, 0.5, n_boot=0)
    assert list(result) == ["Deepfakes", NO_GROUP]
    assert result[NO_GROUP]["n_fake"] == 1 and result[NO_GROUP]["n_real"] == 2
    assert result["Deepfakes"]["frame"]["ci"] is None and result["Deepfakes"]["video"] is None
    assert group_metrics([None] * 5, labels, scores, 0.5) == {}
    assert group_metrics(["youtube", "youtube", None, None, None], labels, scores, 0.5) == {}
    with pytest.raises(DataError, match="one entry per row"):
        group_metrics(samples[:2], labels, scores, 0.5)


def test_rows_that_are_videos_give_the_video_level_only() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    result = group_metrics(["a", "b", None, "x", "x", "y"], labels, [0.1, 0.2, 0.6, 0.7, 0.9, 0.4],
                           0.5, videos=[f"v{i}" for i in range(6)], rows="video", n_boot=50)
    assert set(result) == {"x", "y"} and result["x"]["frame"] is None
    assert result["x"]["video"]["auc"] == 1.0 and result["x"]["video"]["n_videos"] == 5
    expected = roc_auc_score([0, 0, 0, 1], [0.1, 0.2, 0.6, 0.4])
    assert result["y"]["video"]["auc"] == pytest.approx(expected)


def test_groups_csv_and_chart(tmp_path: Path) -> None:
    y, s, vids, groups = _table(np.random.default_rng(1))
    result = group_metrics(groups, y, s, 0.5, videos=vids, n_boot=100)
    write_groups_csv(tmp_path / "groups.csv", result)
    with open(tmp_path / "groups.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == GROUPS_CSV_COLUMNS
        rows = list(reader)
    assert [(r["group"], r["level"]) for r in rows] == [(g, lv) for g in GROUPS
                                                        for lv in ("frame", "video")]
    first = rows[0]
    assert (first["n_real"], first["n_fake"], first["n_videos"]) == ("48", "24", "18")
    assert float(first["auc"]) == pytest.approx(result["Deepfakes"]["frame"]["auc"], abs=1e-6)
    assert float(first["auc_low"]) <= float(first["auc"]) <= float(first["auc_high"])
    assert {"eer_low", "ap_high", "acc_at_threshold_low"} <= set(first)
    png = plot_group_metrics(result, tmp_path / "groups.png", title="toy")
    assert png is not None and Image.open(png).size[0] > 300
    assert plot_group_metrics({}, tmp_path / "none.png") is None
    video_only = group_metrics(["a", "x", "y"], [0, 1, 1], [0.2, 0.8, 0.6], 0.5,
                               videos=["1", "2", "3"], rows="video", n_boot=0)
    assert plot_group_metrics(video_only, tmp_path / "video_only.png") is not None
    write_groups_csv(tmp_path / "video_only.csv", video_only)
    lines = (tmp_path / "video_only.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("x,video,1,1,2,1.000000,,")


# -- evaluate ---------------------------------------------------------------------------------


def _grouped_samples(root: Path) -> list[Sample]:
    """make_dataset's files as samples: the fake videos in two methods, the reals in a source
    group of their own (which per-group metrics must ignore)."""
    samples = []
    for label, name in ((0, "real"), (1, "fake")):
        for path in sorted((root / name).glob("*.png")):
            video = path.stem.split("_frame_")[0]
            group = "youtube" if label == 0 else ("Deepfakes" if video < "v002" else "FaceSwap")
            samples.append(Sample(path, label, f"{name}/{video}", dataset="toy",
                                  frame=path.stem, group=group))
    return samples


def _tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    with torch.no_grad():  # spread the scores so that the metrics are not all ties
        for p in det.head.parameters():
            p.mul_(40.0)
    return LoadedModel(det)


def test_evaluate_samples_reports_intervals_groups_and_provenance(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "toy", videos_per_class=4, frames=3)
    samples = _grouped_samples(data)
    out = tmp_path / "eval"
    options = ScoringOptions(batch_size=8, num_workers=0, device="cpu", progress=False)
    metrics = evaluate_samples(_tiny_model(), samples, out, 0.5, name="toy", options=options,
                               bootstrap=200, seed=4, threshold_origin="fixed (--threshold)",
                               data_path=str(data), error_examples=0)
    for name in ("metrics.json", "groups.csv", "groups.png", "predictions.csv"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    for level in ("frame", "video"):
        ci = saved[level]["ci"]
        assert ci["resampled"] == "videos" and ci["n_clusters"] == 8 and ci["seed"] == 4
        assert set(ci) >= {"auc", "eer", "ap", "acc", "acc_at_threshold", "n_resamples", "level"}
    report = saved["report"]
    assert report["levels"] == ["frame", "video"] and report["video_aggregation"] == "mean"
    assert report["counts"] == {"frames": 24, "frames_real": 12, "frames_fake": 12,
                                "videos": 8, "videos_real": 4, "videos_fake": 4}
    assert report["threshold"] == 0.5 and report["threshold_origin"] == "fixed (--threshold)"
    assert report["data_path"] == str(data)
    assert report["bootstrap"]["resamples"] == 200 and report["bootstrap"]["seed"] == 4
    assert report["groups"] == ["Deepfakes", "FaceSwap"]
    groups = saved["groups"]
    assert set(groups) == {"Deepfakes", "FaceSwap"}
    assert groups["Deepfakes"]["n_real"] == 12 and groups["Deepfakes"]["n_fake"] == 6
    assert groups["Deepfakes"]["video"]["n_videos"] == 6
    # the same numbers by hand from predictions.csv
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    fs = np.array([r["video"] < "fake/v002" for r in rows])  # the Deepfakes videos
    task = (y == 0) | ((y == 1) & fs)
    assert groups["Deepfakes"]["frame"]["auc"] == pytest.approx(roc_auc_score(y[task], s[task]),
                                                                abs=1e-5)
    with open(out / "groups.csv", newline="") as fh:
        assert [r["level"] for r in csv.DictReader(fh)] == ["frame", "video"] * 2

    text = dict(summary_rows(metrics))
    assert "[" in text["auc"] and "frame |" in text["auc"] and text["auc"].endswith("] video")
    assert text["threshold"] == "0.5 (fixed (--threshold))"
    assert "200 resamples of videos, seed 4" in text["intervals"]
    assert text["  group Deepfakes"].startswith("auc ")
    assert text["  group Deepfakes"].endswith("; fakes: 6 frames / 2 videos")
    assert "  group Deepfakes" not in dict(summary_rows(metrics, groups=False))
    assert [r[0] for r in group_rows(metrics)] == ["Deepfakes", "FaceSwap"]
    summary = _summary(metrics)
    assert set(summary) == {"frame", "video", "skipped", "groups"}
    assert summary["frame"]["ci"]["auc"] == [metrics["frame"]["ci"]["auc"]["low"],
                                             metrics["frame"]["ci"]["auc"]["high"]]


def test_evaluate_samples_without_groups_or_bootstrap_keeps_the_old_outputs(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "toy", videos_per_class=2, frames=2)
    samples = [Sample(s.path, s.label, s.video, dataset="toy") for s in _grouped_samples(data)]
    out = tmp_path / "eval"
    options = ScoringOptions(batch_size=8, num_workers=0, device="cpu", progress=False)
    metrics = evaluate_samples(_tiny_model(), samples, out, 0.5, options=options, bootstrap=0,
                               plots=False)
    assert not (out / "groups.csv").exists() and "groups" not in metrics
    assert metrics["frame"]["ci"] is None and metrics["report"]["bootstrap"]["resamples"] == 0
    assert metrics["report"]["threshold_origin"] == "given by the caller"
    assert "[" not in dict(summary_rows(metrics))["auc"]


def test_clip_videos_take_the_group_of_their_first_frame() -> None:
    from deepfake_detect.data.video_clips import VideoFrames

    samples = [Sample(Path("f/a/0.png"), 1, "a", dataset="d", group="Deepfakes"),
               Sample(Path("f/a/1.png"), 1, "a", dataset="d", group="Deepfakes"),
               Sample(Path("f/b/0.png"), 1, "b", dataset="d", group="FaceSwap"),
               Sample(Path("r/c/0.png"), 0, "c", dataset="d")]
    videos = [VideoFrames("a", 1, None, "d", (Path("f/a/0.png"), Path("f/a/1.png"))),
              VideoFrames("b", 1, None, "d", ()),  # no frames left: found by its id
              VideoFrames("c", 0, None, "d", (Path("r/c/0.png"),))]
    assert _video_groups(samples, videos) == ["Deepfakes", "FaceSwap", None]


def test_a_clip_detector_reports_video_intervals_and_groups(tmp_path: Path) -> None:
    from dataclasses import replace

    from conftest import TINY_DUAL_STREAM, write_face_like
    from deepfake_detect.data.video_clips import frames_folder_samples

    rng = np.random.default_rng(0)
    samples = []
    for label, name in ((0, "real"), (1, "fake")):
        for v in range(4):
            folder = tmp_path / name / f"{name}_v{v}"
            for f in range(3):
                write_face_like(folder / f"{f}.png", label, rng, 32)
            group = None if label == 0 else ("Deepfakes", "FaceSwap")[v % 2]
            samples += [replace(s, group=group) for s in frames_folder_samples(folder, label)]
    torch.manual_seed(0)
    detector = build_detector({**TINY_DUAL_STREAM,
                               "sequence": {"frames": 3, "stride": 1, "eval_clips": 1}}).eval()
    options = ScoringOptions(batch_size=4, num_workers=0, device="cpu", progress=False)
    out = tmp_path / "eval"
    metrics = evaluate_samples(LoadedModel(detector), samples, out, 0.5, options=options,
                               bootstrap=100, plots=True, error_examples=0)
    assert metrics["frame"] is None and metrics["video"]["ci"]["n_clusters"] == 8
    report = metrics["report"]
    assert report["levels"] == ["video"] and report["counts"]["frames"] == 24
    assert report["counts"]["videos"] == 8 and report["counts"]["clips"] == 8
    groups = metrics["groups"]
    assert set(groups) == {"Deepfakes", "FaceSwap"}
    assert groups["Deepfakes"]["frame"] is None
    assert groups["Deepfakes"]["video"]["n_videos"] == 6
    assert (groups["Deepfakes"]["n_real"], groups["Deepfakes"]["n_fake"]) == (4, 2)
    assert (out / "groups.csv").is_file() and (out / "groups.png").is_file()
    assert dict(summary_rows(metrics))["  group FaceSwap"].endswith("fakes: 2 videos")


def test_threshold_origin_says_where_the_threshold_came_from(tmp_path: Path) -> None:
    from deepfake_detect.models.checkpoint_meta import CheckpointMeta

    model = _tiny_model()
    assert threshold_origin(model, 0.3) == "fixed (--threshold)"
    assert threshold_origin(model, None) == "default 0.5"
    base = {"model": {"name": "timm"}}
    trained = {**base, "val_metrics": {"val_auc": 0.9},
               "experiment": {"eval": {"threshold": {"strategy": "eer", "value": 0.5}}}}
    for meta, threshold, expected in [
        (base, 0.5, "checkpoint default 0.5"),
        ({**trained, "threshold": 0.42}, 0.42, "checkpoint (chosen on validation: eer)"),
        ({**base, "threshold": 0.7, "calibration": {"data": ["val/"], "split": "val",
                                                    "threshold_strategy": "max_acc"}},
         0.7, "checkpoint (calibrated on the val split of val/: max_acc)"),
        ({**base, "threshold": 0.7}, 0.7, "checkpoint (stored value; its origin is not recorded)"),
    ]:
        stored = CheckpointMeta.read({**meta, "threshold": threshold}, "x")
        loaded = LoadedModel(model.module, stored)
        assert threshold_origin(loaded, None) == expected


def test_evaluate_command_prints_intervals_and_takes_bootstrap_options(tmp_path: Path) -> None:
    from deepfake_detect.cli import app

    ckpt = face_checkpoint(tmp_path / "model", {})
    data = make_dataset(tmp_path / "toy", videos_per_class=3, frames=2)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                      "--out", str(out), "--workers", "0", "--no-plots",
                                      "--bootstrap", "50", "--seed", "3"], terminal_width=200)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "toy" / "metrics.json").read_text())
    assert saved["frame"]["ci"]["n_resamples"] == 50 and saved["video"]["ci"]["seed"] == 3
    assert saved["report"]["threshold_origin"] == "checkpoint default 0.5"
    assert saved["report"]["data_path"] == str(data)
    assert "50 resamples of videos, seed 3" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["toy"]["frame"]) >= {"auc", "eer", "ap", "acc", "macro_f1", "n", "ci"}
    bad = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                   "--out", str(tmp_path / "e2"), "--bootstrap", "-1"])
    assert bad.exit_code != 0
