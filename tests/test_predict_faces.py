"""predict is face-aware by default: every photo and video goes through the one face pipeline,
every face found is scored, a photo without a face gets status no_face and no score; images
declared to be face crops (--crops) are scored as they are."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BrightSquare, face_checkpoint, square_frames, write_video
from PIL import Image
from typer.testing import CliRunner

from deepfake_detect.cli.app import app
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.pipeline import FacePipeline
from deepfake_detect.errors import ConfigError
from deepfake_detect.models import (
    build_detector,
    load_checkpoint,
)

runner = CliRunner()
# The checkpoint's face settings: its crop geometry is used, its selection ("largest") is not.
PREPARE = {
    "frames": {"count": 3},
    "detect": {"detect_size": 640},
    "crop": {"select": "largest", "size": 48, "margin": 1.3},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return face_checkpoint(tmp_path_factory.mktemp("ckpt"), PREPARE)


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    """A uniform grey 300 x 200 picture: no face in it."""
    path = tmp_path_factory.mktemp("noface") / "grey.png"
    Image.new("RGB", (300, 200), (128, 128, 128)).save(path)
    return path


def _predict(checkpoint: Path, *args: str) -> tuple[list[dict], str]:
    """Plain ``predict --checkpoint CKPT ARGS``: the CSV on standard output, parsed."""
    result = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), *args])
    assert result.exit_code == 0, result.output
    # (a transient progress bar of the crop scorer may leave a blank line on standard output)
    return list(csv.DictReader(io.StringIO(result.stdout.lstrip("\n")))), result.output


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_shared_photos_get_one_scored_row_each(checkpoint: Path, shared: Path,
                                               tmp_path: Path) -> None:
    photos = sorted((shared / "media" / "faces").glob("*.jpg"))
    assert len(photos) >= 6
    per_frame = tmp_path / "faces.csv"
    rows, _ = _predict(checkpoint, *map(str, photos), "--per-frame", str(per_frame))
    assert [r["filename"] for r in rows] == [str(p) for p in photos]  # one row per file
    header = list(rows[0])
    assert header[:6] == ["filename", "label", "score", "frames", "faces", "error"]
    assert header[-1] == "status"
    for r in rows:
        assert r["status"] == "ok" and r["error"] == "", r
        assert 0 <= float(r["score"]) <= 1 and r["label"] in ("0", "1")
        assert r["frames"] == "1" and int(r["faces"]) >= 1
    by_name = {Path(r["filename"]).name: r for r in rows}
    # every face found is scored, not only the largest (the checkpoint's own selection)
    assert int(by_name["multiface.jpg"]["faces"]) > 2
    assert by_name["two_people.jpg"]["faces"] == "2"
    faces = _read(per_frame)
    assert len(faces) == sum(int(r["faces"]) for r in rows)  # --per-frame lists every face
    multi = [f for f in faces if Path(f["filename"]).name == "multiface.jpg"]
    assert len(multi) == int(by_name["multiface.jpg"]["faces"])
    assert len({f["box"] for f in multi}) == len(multi)  # distinct faces
    assert sorted(int(f["face"]) for f in multi) == list(range(len(multi)))
    # the file score is the aggregation (mean) of its face scores
    mean = np.mean([float(f["score"]) for f in multi])
    assert float(by_name["multiface.jpg"]["score"]) == pytest.approx(mean, abs=2e-6)


def test_two_people_both_listed_per_frame_and_select(checkpoint: Path, shared: Path,
                                                      tmp_path: Path) -> None:
    photo = shared / "media" / "faces" / "two_people.jpg"
    per_frame = tmp_path / "faces.csv"
    rows, _ = _predict(checkpoint, str(photo), "--per-frame", str(per_frame),
                       "--aggregation", "max")
    faces = _read(per_frame)
    assert len(faces) == 2 and {f["face"] for f in faces} == {"0", "1"}
    boxes = [json.loads(f["box"]) for f in faces]
    assert boxes[0][0] != boxes[1][0]  # side by side: two different people
    assert all(f["frame"] == "0" and f["filename"] == str(photo) for f in faces)
    assert float(rows[0]["score"]) == pytest.approx(max(float(f["score"]) for f in faces), abs=2e-6)
    # --select largest scores one of them only
    largest, _ = _predict(checkpoint, str(photo), "--select", "largest")
    assert largest[0]["faces"] == "1" and largest[0]["status"] == "ok"
    bad = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), str(photo),
                              "--select", "biggest"])
    assert bad.exit_code != 0 and "--select" in bad.output + str(bad.exception)


def test_photo_without_a_face_gets_no_face_and_no_score(checkpoint: Path, grey: Path,
                                                        shared: Path, tmp_path: Path) -> None:
    photo = shared / "media" / "faces" / "paul_rudd.jpg"
    _, output = _predict(checkpoint, str(grey), str(photo), "--out", str(tmp_path / "p.csv"),
                         "--json", str(tmp_path / "p.json"))
    rows = _read(tmp_path / "p.csv")
    by_name = {Path(r["filename"]).name: r for r in rows}
    g = by_name["grey.png"]
    assert g["status"] == "no_face" and g["score"] == "" and g["label"] == ""
    assert g["error"].startswith("no_face") and g["frames"] == "1" and g["faces"] == "0"
    assert by_name["paul_rudd.jpg"]["status"] == "ok"
    assert "1 scored, 1 without a face, 0 failed" in " ".join(output.split())
    records = {Path(r["filename"]).name: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert records["grey.png"]["status"] == "no_face" and records["grey.png"]["score"] is None
    assert records["paul_rudd.jpg"]["status"] == "ok"
    # a submission needs every row: the file without a face gets --fail-label
    sub = tmp_path / "submission.csv"
    result = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), str(grey),
                                 "--format", "submission", "--out", str(sub), "--fail-label", "0"])
    assert result.exit_code == 0, result.output
    assert sub.read_text().splitlines() == ["filename,label", "grey.png,0"]
    assert "not scored, labelled 0" in " ".join(result.output.split())


def test_crops_are_scored_as_they_are(checkpoint: Path, shared: Path) -> None:
    from deepfake_detect.inference.scoring import score_files

    folder = shared / "media" / "crops"
    files = sorted(folder.rglob("*.png"))
    rows, _ = _predict(checkpoint, "--crops", str(folder), "--workers", "0")
    assert len(rows) == len(files) == 22
    assert all(r["status"] == "ok" and r["frames"] == "1" and r["faces"] == "1" for r in rows)
    direct = score_files(load_checkpoint(checkpoint), files, num_workers=0, progress=False)
    expected = {str(p): f"{s:.6f}" for p, s in zip(files, direct.scores, strict=True)}
    assert {r["filename"]: r["score"] for r in rows} == expected
    # the older spelling: --no-detect-faces is --crops, --detect-faces the default
    again, _ = _predict(checkpoint, "--no-detect-faces", str(folder), "--workers", "0")
    assert [(r["filename"], r["score"]) for r in again] == [
        (r["filename"], r["score"]) for r in rows
    ]
    both = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), str(folder),
                               "--crops", "--detect-faces"])
    assert both.exit_code != 0 and "--crops" in both.output + str(both.exception)


def test_detect_faces_is_the_default(checkpoint: Path, shared: Path) -> None:
    photo = str(shared / "media" / "faces" / "two_people.jpg")
    plain, _ = _predict(checkpoint, photo)
    alias, _ = _predict(checkpoint, photo, "--detect-faces")
    assert plain == alias and plain[0]["faces"] == "2"


def test_library_default_and_options_checked_before_reading(checkpoint: Path, grey: Path) -> None:
    from deepfake_detect.inference.predict import predict_files

    detector = load_checkpoint(checkpoint)
    (row,) = predict_files(detector, [grey], progress=False, device="cpu")
    assert (row.status, row.score, row.label) == ("no_face", None, None)
    with pytest.raises(ConfigError, match="--select"):
        predict_files(detector, [grey], select="most", progress=False)
    with pytest.raises(ConfigError, match="contradict"):
        predict_files(detector, [grey], detect_faces=True, crops=True, progress=False)


# -- the one face pipeline ------------------------------------------------------------------------


def test_pipeline_cuts_videos_and_photos_with_frame_time_track_and_reasons(tmp_path: Path) -> None:
    settings = PrepareConfig.model_validate(
        {"frames": {"count": 4}, "detect": {"batch_size": 3}, "crop": {"size": 32, "select": "all"}}
    )
    stub = BrightSquare()
    pipeline = FacePipeline(settings, stub)
    video = write_video(tmp_path / "v.mp4", square_frames(12, empty=(0,)))
    faces = pipeline.video(video)
    cuts = list(faces)
    assert faces.frames == 4 and faces.failure is None and not faces.decode_error
    assert [c.frame for c in cuts] == sorted(c.frame for c in cuts) and len(cuts) == 4
    assert not cuts[0].ok and cuts[0].reason == "no face detected" and cuts[0].pixels is None
    for c in cuts[1:]:
        assert c.ok and c.pixels.shape == (32, 32, 3) and c.track == 0 and len(c.box) == 4
        assert c.time > 0
    assert max(stub.calls) <= 3  # detection batched by detect.batch_size
    # photos, in the order given, an unreadable one with its failure
    photo = tmp_path / "p.png"
    Image.fromarray(square_frames(1, (64, 64))[0]).save(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no image")
    got = list(pipeline.photos([photo, broken, photo]))
    assert [g.path for g in got] == [photo, broken, photo]
    assert got[1].failure[0] == "unreadable" and got[1].frames == 0
    first = list(got[0])
    assert len(first) == 1 and first[0].frame == 0 and first[0].time == 0.0 and first[0].ok
    # a file that cannot be opened as a video: a failure, not an exception
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 20)
    failed = pipeline.file(bad)
    assert list(failed) == [] and failed.failure[0] == "unreadable"


def test_prepare_and_predict_cut_the_same_crops(tmp_path: Path, shared: Path) -> None:
    """One pipeline: the crops prepare writes are the pixels the media scorer classifies."""
    from deepfake_detect.data.prepare import prepare
    from deepfake_detect.inference.media_scoring import MediaScorer

    photo = shared / "media" / "faces" / "two_people.jpg"
    settings = PrepareConfig.model_validate({
        "detect": {"detect_size": 640, "device": "cpu"},
        "crop": {"select": "all", "size": 48, "format": "png"},
    })
    prepare([photo], tmp_path / "out", settings, label=0, progress=False)
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        written = [np.asarray(Image.open(tmp_path / "out" / r["path"]).convert("RGB"))
                   for r in csv.DictReader(fh)]

    class Keeping(MediaScorer):
        def _classify(self, crops):
            self.seen = list(crops)
            return super()._classify(crops)

    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    scorer = Keeping(det, settings, device="cpu")
    assert scorer.score(photo).faces == 2
    assert len(written) == 2
    for mine, theirs in zip(scorer.seen, written, strict=True):
        np.testing.assert_array_equal(mine, theirs)
