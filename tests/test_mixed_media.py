"""Dataset folders that mix face images and raw videos: videos become cached face crops."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import BrightSquare, square_frames, tiny_config, write_face_like, write_video

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import DataConfig, PrepareConfig
from deepfake_detect.data import FaceDataModule, build_eval_samples
from deepfake_detect.data.faces.base import FaceDetector
from deepfake_detect.errors import DataError

PRE = {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PREP = PrepareConfig.model_validate(
    {"frames": {"count": 3}, "detect": {"batch_size": 4}, "crop": {"size": 32}}
)


def mixed_folder(root: Path, images_per_class: int = 4, split: str | None = "train") -> Path:
    """``root/[split/]{real,fake}/`` with face-like images (2 frames per video) and one video
    per class; the fake video has no face in its first frames."""
    rng = np.random.default_rng(0)
    base = root / split if split else root
    for label, name in ((0, "real"), (1, "fake")):
        for v in range(images_per_class):
            for f in range(2):
                write_face_like(base / name / f"{name}_{v:03d}_frame_{f}.png", label, rng)
    write_video(base / "real" / "real_clip.mp4", square_frames(12))
    write_video(base / "fake" / "fake_clip.mp4", square_frames(12, empty=(0, 1, 2, 3)))
    return root


def module(root: Path, tmp_path: Path, detector: FaceDetector | None = None, **data) -> FaceDataModule:
    data.setdefault("num_workers", 0)
    data.setdefault("batch_size", 4)
    return FaceDataModule(
        DataConfig(path=[root], **data), PRE, prepare=PREP, cache_root=tmp_path / "runs",
        progress=False, face_detector=detector or BrightSquare(),
    )


def test_video_crops_join_the_samples(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "seed")
    dm = module(root, tmp_path)
    dm.setup("fit")
    samples = dm._require()
    images = [s for s in samples if s.path.is_relative_to(root)]
    assert len(images) == 16 and {s.dataset for s in images} == {"seed"}

    real = [s for s in samples if s.video == "train/real/real_clip"]
    fake = [s for s in samples if s.video == "train/fake/fake_clip"]
    assert len(real) == 3 and len(fake) == 2  # 3 sampled frames; the fake's first has no face
    cache = tmp_path / "runs" / "faces-cache"
    for crops, label in ((real, 0), (fake, 1)):
        assert {s.label for s in crops} == {label} and {s.dataset for s in crops} == {"seed"}
        assert all(s.path.is_relative_to(cache) and s.path.is_file() for s in crops)
        assert all(s.frame.startswith(s.video + "/") for s in crops)
        assert len({s.frame for s in crops}) == len(crops)
        assert len({s.split for s in crops}) == 1  # one video, one split
    # a video's crops are never grouped with another video's images
    assert not any(s.video in {"train/real/real_clip", "train/fake/fake_clip"} for s in images)
    assert dm.skipped == []
    assert dm.video_crops.videos == 2 and dm.video_crops.crops == 5
    assert dm.video_crops.frames_without_face == 1
    assert "videos cut into face crops: 2 (5 crops, 0 failed, 1 frames without a face)" in dm.summary()
    assert dm.ignored_files == 0  # videos are used, not ignored

    # the automatic grouped split keeps each video whole, whichever way it falls
    landed = set()
    for seed in range(6):
        other = module(root, tmp_path, split_seed=seed, val_fraction=0.3)
        other.setup("fit")
        splits = {s.split for s in other._require() if s.video == "train/real/real_clip"}
        assert len(splits) == 1
        landed |= splits
    assert landed == {"train", "val"}


def test_second_setup_reuses_the_cache(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "seed")
    first_stub = BrightSquare()
    first = module(root, tmp_path, first_stub, faces_cache=tmp_path / "cache")
    first.setup("fit")
    assert first_stub.calls and first.video_crops.reused == 0
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    assert (tmp_path / "cache" / f"seed-{digest}" / "manifest.csv").is_file()
    assert not (tmp_path / "runs").exists()  # data.faces_cache wins over cache_root

    stub = BrightSquare()
    again = module(root, tmp_path, stub, faces_cache=tmp_path / "cache")
    again.setup("fit")
    assert stub.calls == [] and again.video_crops.reused == 2
    assert [s.path for s in again._require()] == [s.path for s in first._require()]


def test_failed_videos_are_skipped_and_counted(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "seed")
    (root / "train" / "fake" / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + b"junk" * 64)
    write_video(root / "train" / "real" / "empty.mp4", square_frames(6, empty=range(6)))
    dm = module(root, tmp_path)
    dm.setup("fit")
    reasons = {Path(p).name: r for p, r in dm.skipped}
    assert set(reasons) == {"broken.mp4", "empty.mp4"}
    assert "no face found in any of its 3 sampled frames" in reasons["empty.mp4"]
    assert reasons["broken.mp4"].startswith("video gave no face crop")
    assert dm.video_crops.videos == 4 and dm.video_crops.failed == 2
    assert dm.video_crops.crops == 5  # the good videos carry on
    summary = dm.summary()
    assert "(5 crops, 2 failed, 4 frames without a face)" in summary
    assert "skipped unreadable or missing images: 0" in summary
    assert not any(s.video.endswith(("broken", "empty")) for s in dm._require())


def test_refuse_says_what_to_run(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "seed")
    with pytest.raises(DataError) as info:
        module(root, tmp_path, videos="refuse").setup("fit")
    message = str(info.value)
    assert f"deepfake-detect prepare {root} --out {root}_faces" in message
    assert "2 video file(s)" in message and "clip.mp4" in message
    assert not (tmp_path / "runs").exists()
    # without a cache location the error names the key to set
    dm = FaceDataModule(DataConfig(path=[root], num_workers=0), PRE, face_detector=BrightSquare())
    with pytest.raises(DataError, match="data.faces_cache"):
        dm.setup("fit")


def test_eval_samples_of_a_videos_only_folder(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    write_video(root / "real" / "a.mp4", square_frames(8))
    write_video(root / "fake" / "sub" / "b.mp4", square_frames(8))
    samples = build_eval_samples(
        [root], prepare=PREP, cache_root=tmp_path / "out", progress=False,
        face_detector=BrightSquare(),
    )
    assert sorted({(s.video, s.label, s.split) for s in samples}) == [
        ("fake/sub/b", 1, None), ("real/a", 0, None),
    ]
    assert len(samples) == 6


def test_train_and_evaluate_on_a_mixed_folder(tmp_path: Path, shared: Path, monkeypatch) -> None:
    """Real face detection (MTCNN) on a real video, end to end through train and evaluate."""
    from deepfake_detect.evaluation.evaluate import evaluate_checkpoint
    from deepfake_detect.training.train import train

    root = mixed_folder(tmp_path / "seed", images_per_class=6)
    for name in ("real/real_clip.mp4", "fake/fake_clip.mp4"):
        shutil.copy(shared / "media/videos/faces_1080p.mp4", root / "train" / name)
    (root / "train" / "fake" / "broken.mp4").write_bytes(b"not a video" * 32)
    base = tiny_config(root, tmp_path / "runs", epochs=1)
    base["prepare"] = {
        "frames": {"count": 2},
        "detect": {"device": "cpu", "detect_size": 320, "batch_size": 2},
        "crop": {"size": 32},
    }
    result = train(load_config(base=base), out=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["skipped"] == 1
    assert report["skipped_files"][0]["path"].endswith("broken.mp4")
    counts = report["class_counts"]
    # 12 images + 2 crops per class, wherever the grouped split put them
    assert sum(c["real"] for c in counts.values()) == 14
    assert sum(c["fake"] for c in counts.values()) == 14

    # evaluate finds the training run's cache: no face detector is needed again
    def no_detector(*args, **kwargs):
        raise AssertionError("face detection should have been reused from the cache")

    monkeypatch.setattr("deepfake_detect.data.prepare.build_face_finder", no_detector)
    results = evaluate_checkpoint(
        result.best_checkpoint, [root], tmp_path / "eval", split="all", num_workers=0,
        plots=False, progress=False,
    )
    metrics = results["seed"]
    assert metrics["frame"]["n"] == 28 and metrics["skipped"] == 1
    assert metrics["video"]["n_videos"] == 12 + 2
