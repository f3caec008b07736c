"""prepare: media discovery, crops and manifest, failures recorded, resume, real faces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BrightSquare, square_frames, write_video
from PIL import Image

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import Face, FaceDetector
from deepfake_detect.data.media_inputs import find_media
from deepfake_detect.data.prepare import prepare, read_prepare_settings
from deepfake_detect.data.sources import scan
from deepfake_detect.errors import DataError


def _settings(**crop) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {"frames": {"count": 6}, "detect": {"batch_size": 4}, "crop": {"size": 32, **crop}}
    )


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    write_video(root / "train" / "real" / "a.mp4", square_frames(20))
    write_video(root / "train" / "fake" / "b.mp4", square_frames(20, empty=range(0, 20, 2)))
    write_video(root / "val" / "real" / "c.mp4", square_frames(3))  # shorter than 6 frames
    (root / "val" / "fake").mkdir(parents=True)
    (root / "val" / "fake" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + b"garbage" * 50)
    Image.fromarray(square_frames(1, (64, 64))[0]).save(root / "train" / "real" / "photo.png")
    return root


def test_find_media_layouts(tmp_path: Path, media: Path) -> None:
    found = find_media([media])
    by_video = {(i.split, i.label, i.video): i.kind for i in found.items}
    assert by_video == {
        ("train", 0, "a"): "video", ("train", 1, "b"): "video", ("val", 0, "c"): "video",
        ("val", 1, "broken"): "video", ("train", 0, "photo"): "image",
    }
    # DFDC metadata.json labels the files of its folder
    dfdc = tmp_path / "dfdc_part_0"
    write_video(dfdc / "aaa.mp4", square_frames(2))
    write_video(dfdc / "bbb.mp4", square_frames(2))
    (dfdc / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "bbb.mp4": {"label": "REAL", "split": "train"},
    }))
    labels = {i.video: (i.label, i.split) for i in find_media([dfdc]).items}
    assert labels == {"aaa": (1, "train"), "bbb": (0, "train")}
    # CSV manifest and a bare file with a default label; a missing path is reported
    (tmp_path / "list.csv").write_text("path,label\nmedia/train/real/a.mp4,fake\n")
    extra = find_media([tmp_path / "list.csv", dfdc / "aaa.mp4", tmp_path / "nope.mp4"], label=0)
    assert [(i.label, i.kind) for i in extra.items] == [(1, "video"), (0, "video")]
    assert extra.problems == [(str(tmp_path / "nope.mp4"), "no such file or folder")]


def test_prepare_writes_crops_manifest_and_failures(tmp_path: Path, media: Path) -> None:
    out = tmp_path / "faces"
    stub = BrightSquare()
    report = prepare([media], out, _settings(), progress=False, detector=stub)
    rows = _rows(out / "manifest.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    # a: 6 frames with faces; b: 6 sampled frames, the even ones empty; c: 3 frames; photo: 1
    assert len(ok) == 6 + 3 + 3 + 1
    assert report.faces == len(ok) and report.frames_without_face == 3
    assert report.videos == 4 and report.videos_failed == 1 and report.photos == 1
    assert report.short_videos == 1
    assert report.frames_read == 6 + 6 + 3 + 1
    for r in ok:
        img = Image.open(out / r["path"])
        assert img.size == (32, 32)
        assert len(json.loads(r["box"])) == 4
    a_paths = sorted(r["path"] for r in ok if r["video"] == "a")
    assert a_paths[0] == "train/real/a/00000.png" and a_paths[-1] == "train/real/a/00019.png"
    no_face = [r for r in rows if r["status"] == "no_face"]
    assert {r["video"] for r in no_face} == {"b"} and all(r["reason"] for r in no_face)
    assert all(int(r["frame"]) % 2 == 0 for r in no_face)  # never silently dropped
    broken = [r for r in rows if r["video"] == "broken"]
    assert len(broken) == 1 and broken[0]["status"] == "unreadable" and "broken.mp4" in broken[0]["reason"]
    assert report.failures["unreadable"] == 1
    assert max(stub.calls) <= 4  # detection batched by detect.batch_size
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["prepare"]["crop"]["size"] == 32 and settings["git_commit"]
    assert read_prepare_settings([out / "manifest.csv"]) == _settings()


def test_manifest_is_a_training_dataset(tmp_path: Path, media: Path) -> None:
    out = tmp_path / "faces"
    prepare([media], out, _settings(), progress=False, detector=BrightSquare())
    found = scan([out / "manifest.csv"])
    assert len(found.samples) == 13
    assert len(found.no_crop) == 4  # 3 frames without a face, 1 broken video
    videos = {s.video for s in found.samples}
    assert videos == {"train/real/a", "train/fake/b", "val/real/c", "train/real/photo"}
    assert all(s.frame and s.frame.startswith(s.video + "/") for s in found.samples)
    # the crop folders also read as a split-folder dataset, frames known from the file names
    folder = scan([out])
    assert sorted(s.video for s in folder.samples) == sorted(s.video for s in found.samples)
    assert {s.frame for s in folder.samples} == {s.frame for s in found.samples}


def test_prepare_resumes(tmp_path: Path, media: Path) -> None:
    out = tmp_path / "faces"
    prepare([media], out, _settings(), progress=False, detector=BrightSquare())
    first = (out / "manifest.csv").read_text()
    stamp = (out / "train/real/a/00000.png").stat().st_mtime_ns
    stub = BrightSquare()
    again = prepare([media], out, _settings(), progress=False, detector=stub)
    assert again.reused == 5 and stub.calls == []
    assert (out / "manifest.csv").read_text() == first
    assert (out / "train/real/a/00000.png").stat().st_mtime_ns == stamp
    # an interrupted video (no part file, only the journal of the crops it wrote) is redone:
    # the crops it wrote are removed, a file it did not write is left alone, the rest reused
    parts = sorted((out / ".parts").glob("*.json"))
    for part in parts:
        if '"video": "a"' in part.read_text():
            part.unlink()
            (out / "train/real/a/00099.png").write_bytes(b"half")
            part.with_suffix(".pending").write_text("train/real/a/00099.png\n")
    (out / "train/real/a/notes.png").write_bytes(b"user")
    redo = prepare([media], out, _settings(), progress=False, detector=BrightSquare())
    assert redo.reused == 4
    assert not (out / "train/real/a/00099.png").exists()
    assert (out / "train/real/a/notes.png").read_bytes() == b"user"
    assert not list((out / ".parts").glob("*.pending"))
    assert (out / "manifest.csv").read_text() == first
    # other settings: everything is redone
    changed = prepare([media], out, _settings(size=48), progress=False, detector=BrightSquare())
    assert changed.reused == 0
    assert Image.open(out / "train/real/a/00000.png").size == (48, 48)


def test_prepare_all_faces_are_tracked(tmp_path: Path) -> None:
    frames = []
    for i in range(8):
        img = np.full((96, 160, 3), 20, np.uint8)
        img[10:40, 10 + i : 40 + i] = 230
        img[50:90, 100 - i : 140 - i] = 230
        frames.append(img)
    write_video(tmp_path / "in" / "fake" / "two.mp4", frames)

    class TwoSquares(FaceDetector):
        def detect(self, batch):
            out = []
            for img in batch:
                faces = []
                for y0, y1 in ((0, 45), (45, 96)):
                    ys, xs = np.nonzero(img[y0:y1].mean(axis=2) > 150)
                    box = np.array([xs.min(), ys.min() + y0, xs.max() + 1, ys.max() + 1 + y0], np.float32)
                    faces.append(Face(box=box, score=0.9))
                out.append(faces[::-1] if len(out) % 2 else faces)  # order changes per frame
            return out

    settings = _settings(select="all")
    prepare([tmp_path / "in"], tmp_path / "out", settings, progress=False, detector=TwoSquares())
    rows = [r for r in _rows(tmp_path / "out" / "manifest.csv") if r["status"] == "ok"]
    assert len(rows) == 12
    tracks: dict[str, list[float]] = {}
    for r in rows:
        tracks.setdefault(r["face"], []).append(json.loads(r["box"])[1])
    # each track id follows one square although the detector's order flips
    assert sorted(tracks) == ["0", "1"]
    assert all(len(set(ys)) == 1 for ys in tracks.values())
    assert all(r["path"].endswith(f"_{r['face']}.png") for r in rows)


def test_prepare_empty_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no videos or images"):
        prepare([tmp_path / "empty"], tmp_path / "out", progress=False, detector=BrightSquare())


def test_prepare_real_faces_with_the_default_detector(tmp_path: Path, shared: Path) -> None:
    """The default detector (RetinaFace, recall first) on real media, in two worker processes."""
    video = shared / "media" / "videos" / "faces_1080p.mp4"
    photo = shared / "media" / "faces" / "two_people.jpg"
    settings = PrepareConfig.model_validate({
        "frames": {"count": 4}, "detect": {"detect_size": 640, "device": "cpu"},
        "crop": {"select": "relative", "min_relative_size": 0.3, "mode": "align", "size": 64},
    })
    report = prepare([video, photo], tmp_path / "out", settings, label=0, workers=2, progress=False)
    rows = _rows(tmp_path / "out" / "manifest.csv")
    assert report.frames_without_face == 0 and not report.failures
    frames = {r["frame"] for r in rows if r["video"] == "faces_1080p"}
    assert len(frames) == 4  # a face in every sampled frame
    assert sum(r["video"] == "two_people" for r in rows) == 2
    for r in rows:
        assert r["status"] == "ok" and float(r["score"]) >= 0.9 and r["pass"] == "fast"
        assert len(json.loads(r["landmarks"])) == 5
        assert Image.open(tmp_path / "out" / r["path"]).size == (64, 64)


def test_coarse_to_fine_runs_the_full_pass_only_where_selection_needs_it() -> None:
    from deepfake_detect.config.schema import CropConfig, DetectConfig
    from deepfake_detect.data.faces.cascade import CoarseToFine, build_face_finder

    class Fixed(FaceDetector):
        def __init__(self, sides: list[list[int]]):
            self.sides, self.seen = sides, []

        def detect(self, frames):
            out = []
            for img in frames:
                i = int(img[0, 0, 0])
                self.seen.append(i)
                out.append([Face(np.array([0, 0, s, s], np.float32), 0.99) for s in self.sides[i]])
            return out

    frames = [np.full((100, 200, 3), i, np.uint8) for i in range(3)]
    # frame 0: a big face; frame 1: only a face below the coarse minimum (20 px); frame 2: none
    coarse = Fixed([[50], [15], []])
    fine = Fixed([[50, 10], [15, 12], [9]])
    finder = CoarseToFine(coarse, fine, 0.2, CropConfig(select="largest"))
    found = finder.detect(frames)
    assert fine.seen == [1, 2] and finder.full_passes == 2
    assert [[f.side for f in faces] for faces in found] == [[50], [15, 12], [9]]
    # relative selection: faces down to half the largest (25 px) are wanted, above 20: no redo
    fine.seen.clear()
    CoarseToFine(coarse, fine, 0.2, CropConfig(select="relative", min_relative_size=0.5)).detect(frames[:1])
    assert fine.seen == []
    fine.seen.clear()
    CoarseToFine(coarse, fine, 0.2, CropConfig(select="relative", min_relative_size=0.3)).detect(frames[:1])
    assert fine.seen == [0]  # 0.3 x 50 = 15 px may exist below the coarse minimum
    # off by default and for select all; the recall-first passes wrap it (`first`), and the
    # two-size fast pass (`first.full`: the detect_size search after the fast_size one)
    def fast_pass(finder):
        first = getattr(finder, "first", finder)
        return getattr(first, "full", first)

    assert not isinstance(fast_pass(build_face_finder(DetectConfig(), CropConfig())), CoarseToFine)
    cfg = DetectConfig(coarse_fraction=0.2)
    assert isinstance(fast_pass(build_face_finder(cfg, CropConfig())), CoarseToFine)
    assert not isinstance(fast_pass(build_face_finder(cfg, CropConfig(select="all"))), CoarseToFine)
    # faces kept only for the low_score pass do not spare a frame the full pass
    weak = CoarseToFine(Fixed([[50]]), fine, 0.2, CropConfig(select="largest"), min_score=0.995)
    fine.seen.clear()
    weak.detect(frames[:1])
    assert fine.seen == [0]


def test_in_background_keeps_order_and_passes_errors() -> None:
    from deepfake_detect.data.prepare import in_background

    assert list(in_background(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise ValueError("decoder died")

    got = []
    with pytest.raises(ValueError, match="decoder died"):
        for x in in_background(broken(), depth=2):
            got.append(x)
    assert got == [1]
    # a consumer that stops early does not hang the producer
    gen = in_background(iter(range(1000)), depth=2)
    assert next(gen) == 0
    gen.close()


def test_training_on_a_prepared_manifest_records_the_face_settings(tmp_path: Path) -> None:
    from conftest import tiny_config

    from deepfake_detect.config import load_config
    from deepfake_detect.models import load_checkpoint
    from deepfake_detect.inference.media_scoring import prepare_settings
    from deepfake_detect.training.train import train

    root = tmp_path / "media"
    for i in range(4):
        write_video(root / "real" / f"r{i}.mp4", square_frames(8))
        frames = square_frames(8)
        for img in frames:
            img[20:60, :, 1] = 0  # fakes: a tinted "face"
        write_video(root / "fake" / f"f{i}.mp4", frames)
    settings = _settings(margin=1.5)
    prepare([root], tmp_path / "faces", settings, progress=False, detector=BrightSquare())
    cfg = tiny_config(tmp_path / "faces" / "manifest.csv", tmp_path / "runs", epochs=1)
    cfg["data"]["val_fraction"] = 0.25
    result = train(load_config(base=cfg), out=tmp_path / "run")
    detector = load_checkpoint(result.run_dir / "model.safetensors")
    assert prepare_settings(detector) == settings
