"""predict on raw videos and photos: faces cut with the checkpoint's settings, scored, aggregated."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import face_checkpoint, square_frames, write_video
from typer.testing import CliRunner

from deepfake_detect.cli.app import app
from deepfake_detect.inference.media_scoring import MediaScorer, prepare_settings
from deepfake_detect.inference.predict import predict_files, write_per_face
from deepfake_detect.models import load_checkpoint

PREPARE = {
    "frames": {"count": 3},
    "detect": {"detect_size": 480, "device": "cpu"},
    "crop": {"select": "all", "size": 48, "margin": 1.3},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return face_checkpoint(tmp_path_factory.mktemp("ckpt"), PREPARE)


def test_checkpoint_carries_face_settings(checkpoint: Path) -> None:
    settings = prepare_settings(load_checkpoint(checkpoint))
    assert settings.frames.count == 3 and settings.crop.size == 48 and settings.crop.select == "all"


def test_predict_videos_and_photos(tmp_path: Path, shared: Path, checkpoint: Path) -> None:
    detector = load_checkpoint(checkpoint)
    video = shared / "media" / "videos" / "faces_1080p.mp4"
    photo = shared / "media" / "faces" / "two_people.jpg"
    faceless = write_video(tmp_path / "empty.mp4", square_frames(12, empty=range(12)))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    per_face: list = []
    rows = predict_files(
        detector, [video, photo, faceless, broken], detect_faces=True, progress=False,
        aggregation="sbi", per_face=per_face, device="cpu",
    )
    by_name = {Path(r.filename).name: r for r in rows}
    assert [Path(r.filename).name for r in rows] == ["faces_1080p.mp4", "two_people.jpg", "empty.mp4", "broken.mp4"]
    v = by_name["faces_1080p.mp4"]
    assert v.frames == 3 and v.faces >= 3 and 0 <= v.score <= 1 and v.label in (0, 1) and not v.error
    p = by_name["two_people.jpg"]
    assert p.frames == 1 and p.faces == 2 and not p.error
    e = by_name["empty.mp4"]
    assert e.score is None and e.label is None and e.error.startswith("no_face") and e.frames == 3
    b = by_name["broken.mp4"]
    assert b.score is None and b.error.startswith("unreadable")
    # the file score is the SBI rule over the per-face rows
    faces = [f for f in per_face if f["filename"] == str(video)]
    assert len(faces) == v.faces
    best = {}
    for f in faces:
        best[f["frame"]] = max(best.get(f["frame"], 0.0), f["score"])
    assert v.score == pytest.approx(np.mean(list(best.values())))
    write_per_face(per_face, tmp_path / "faces.csv")
    with open(tmp_path / "faces.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(per_face)


def test_scorer_matches_direct_scoring_of_the_crops(shared: Path, checkpoint: Path) -> None:
    """The media path scores exactly the crops the face pipeline cuts (no hidden resizing)."""
    from deepfake_detect.data.faces.crop import crop_face, select_faces
    from deepfake_detect.data.transforms import build_transform
    from deepfake_detect.data.images import load_rgb

    detector = load_checkpoint(checkpoint)
    scorer = MediaScorer(detector, device="cpu", aggregation="mean")
    photo = shared / "media" / "faces" / "paul_rudd.jpg"
    result = scorer.score(photo)
    img = np.asarray(load_rgb(photo))
    faces = select_faces(scorer.faces.detect([img])[0], scorer.settings.crop)
    x = torch.stack([build_transform(detector.preprocessing())(crop_face(img, f, scorer.settings.crop)) for f in faces])
    with torch.no_grad():
        expected = detector.probabilities(detector(x)).numpy()
    assert result.faces == len(faces) == 1
    assert result.score == pytest.approx(float(expected.mean()), abs=1e-6)


def test_cli_predict_video_writes_rows_and_per_frame(tmp_path: Path, shared: Path, checkpoint: Path) -> None:
    video = shared / "media" / "videos" / "hamilton_360p.mp4"
    res = CliRunner().invoke(app, [
        "predict", "--checkpoint", str(checkpoint), str(video), "--out", str(tmp_path / "p.csv"),
        "--per-frame", str(tmp_path / "f.csv"), "--aggregation", "confident", "--device", "cpu",
    ])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["filename", "label", "score", "frames", "faces", "error", "status"]
    assert rows[0]["frames"] == "3" and int(rows[0]["faces"]) >= 1 and rows[0]["score"]
    with open(tmp_path / "f.csv") as fh:
        faces = list(csv.DictReader(fh))
    assert len(faces) == int(rows[0]["faces"])
    assert all(len(json.loads(f["box"])) == 4 for f in faces)


def test_crop_images_are_scored_as_they_are(tmp_path: Path, shared: Path, checkpoint: Path) -> None:
    crops = shared / "media" / "crops" / "real"
    rows = predict_files(load_checkpoint(checkpoint), [crops], progress=False, device="cpu",
                         crops=True)
    assert len(rows) == 11 and all(r.frames == 1 and r.faces == 1 and r.score is not None for r in rows)
    out = io.StringIO()
    from deepfake_detect.inference.predict import write_predictions

    write_predictions(rows, out)
    assert out.getvalue().splitlines()[0] == "filename,label,score,frames,faces,error,status"
