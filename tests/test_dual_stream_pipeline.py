"""The dual-stream video detector through train, evaluate and predict (clips of face frames)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import TINY_DUAL_STREAM, tiny_config, write_face_like
from typer.testing import CliRunner

from deepfake_detect.cli import app
from deepfake_detect.config import load_config
from deepfake_detect.evaluation.evaluate import evaluate_checkpoint
from deepfake_detect.training.train import train

runner = CliRunner()
MODEL = {**TINY_DUAL_STREAM, "sequence": {"frames": 4, "stride": 2, "eval_clips": 2}}


def video_folders(root, videos=8, frames=9, short=("real/v000",)):
    """``root/{real,fake}/v<k>/<n>.png``: per-video frame folders; listed videos are short."""
    rng = np.random.default_rng(0)
    for label, name in ((0, "real"), (1, "fake")):
        for v in range(videos):
            vid = f"{name}/v{v:03d}"
            n = 3 if vid in short else frames
            for f in range(n):
                write_face_like(root / vid / f"{f}.png", label, rng, 32)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared):
    tmp = tmp_path_factory.mktemp("ds")
    data = video_folders(tmp / "videos")
    config = tiny_config(data, tmp / "runs", epochs=3)
    config["model"] = MODEL
    config["train"].update({"loss": {"name": "bce"}, "monitor": "val_loss"})
    config["data"].update({"batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.25})
    # the face pipeline stored with the model, used by predict on raw videos
    config["prepare"] = {"frames": {"count": 6},
                         "detect": {"device": "cpu", "detect_size": 320, "batch_size": 6},
                         "crop": {"size": 32}}
    result = train(load_config(base=config), out=tmp / "run")
    return result, data, tmp


def test_training_runs_on_clips_and_reports_per_video(trained):
    result, _, _ = trained
    assert result.best_checkpoint is not None
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    assert any(r.get("val_auc") for r in rows)
    test = result.test_metrics
    assert test["frame"] is None  # a sequence detector is scored per video only
    video = test["video"]
    assert video["n_videos"] == 4  # 16 videos, 25% test, grouped by video
    assert {"auc", "ap", "acc", "precision", "recall", "f1"} <= set(video)
    predictions = list(csv.DictReader(open(result.run_dir / "test" / "predictions.csv")))
    assert len({r["video"] for r in predictions}) == len(predictions) == 4  # one row per video
    assert all(int(r["clips"]) == 2 for r in predictions)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["model"]["sequence"] == MODEL["sequence"]


def test_evaluate_writes_per_video_predictions_and_counts_short_videos(trained, tmp_path):
    result, data, _ = trained
    metrics = evaluate_checkpoint(result.run_dir / "model.safetensors", [data], tmp_path / "eval",
                                  split="all", num_workers=0, progress=False)
    (name, m), = metrics.items()
    assert m["video"]["n_videos"] == 16 and m["short_videos_padded"] == 1
    assert m["clips"] == 15 * 2 + 1  # the 3-frame video fits one (padded) clip
    rows = list(csv.DictReader(open(tmp_path / "eval" / name / "predictions.csv")))
    assert len(rows) == 16 and all(0 <= float(r["score"]) <= 1 for r in rows)
    saved = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
    assert saved["video"]["n_videos"] == 16


def test_predict_video_dir_matches_evaluation_and_raw_video_goes_through_faces(trained, tmp_path, shared):
    result, data, _ = trained
    ckpt = result.run_dir / "model.safetensors"
    video = tmp_path / "clip.mp4"
    shutil.copy(shared / "media/videos/faces_1080p.mp4", video)
    out = tmp_path / "preds.csv"
    cli = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--video-dir",
                              str(data / "fake" / "v001"), "--video-dir", str(tmp_path / "none"),
                              str(video), "--out", str(out), "--workers", "0"])
    assert cli.exit_code == 0, cli.output
    rows = {r["filename"]: r for r in csv.DictReader(open(out))}
    folder = rows[str(data / "fake" / "v001")]
    assert folder["error"] == "" and int(folder["faces"]) == 2 and int(folder["frames"]) == 9
    assert "does not exist" in rows[str(tmp_path / "none")]["error"]
    raw = rows[str(video)]
    assert raw["error"] == "" and int(raw["frames"]) == 6 and 0 <= float(raw["score"]) <= 1

    evaluated = evaluate_checkpoint(ckpt, [data], tmp_path / "eval", split="all", num_workers=0,
                                    progress=False, plots=False)
    (name, _), = evaluated.items()
    by_video = {r["video"]: float(r["score"]) for r in
                csv.DictReader(open(tmp_path / "eval" / name / "predictions.csv"))}
    key = next(v for v in by_video if v.endswith("fake/v001"))
    assert float(folder["score"]) == pytest.approx(by_video[key], abs=1e-5)
