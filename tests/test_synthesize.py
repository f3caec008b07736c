"""``synthesize``: self-blended fakes from real crops, with landmarks or a detected face."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces.base import Face, FaceDetector, register_face_detector
from deepfake_detect.data.sources import scan
from deepfake_detect.data.synthesize import detected_face_mask, load_landmarks, synthesize
from deepfake_detect.errors import ConfigError, DataError

NAMES = ("000_0000", "001_0000")
PREPARE_COLUMNS = (
    "path",
    "label",
    "video",
    "frame",
    "face",
    "box",
    "landmarks",
    "score",
    "split",
    "status",
    "reason",
    "source",
    "time",
)


class _FixedFace(FaceDetector):
    """Finds one face at a fixed box in every image (or none), for the detection fallback."""

    def __init__(self, config: DetectConfig, found: bool) -> None:
        self.found = found

    def detect(self, frames):
        kp = np.array([[110, 160], [200, 160], [155, 200], [120, 240], [190, 240]], np.float32)
        face = Face(np.array([60, 110, 250, 295], np.float32), 0.99, kp)
        return [[face] if self.found else [] for _ in frames]


register_face_detector("test-fixed-face")(lambda config: _FixedFace(config, True))
register_face_detector("test-no-face")(lambda config: _FixedFace(config, False))


@pytest.fixture
def lm_dir(shared: Path) -> Path:
    return shared / "media" / "landmarks"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def hull_distance(points) -> tuple[np.ndarray, np.ndarray]:
    """Inside-hull mask and each pixel's distance to the landmark hull, for 317 px crops."""
    inside = np.zeros((317, 317), np.uint8)
    cv2.fillConvexPoly(inside, cv2.convexHull(np.asarray(points, np.int32)), 1)
    return inside.astype(bool), cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)


def test_fakes_differ_from_reals_inside_the_face_only(tmp_path, lm_dir):
    out = tmp_path / "out"
    report = synthesize(
        [lm_dir], out, landmarks=lm_dir / "precomputed_landmarks.json", progress=False
    )
    assert report.made == 2 and report.reals == 2 and report.skipped == []
    assert report.manifest == out / "manifest.csv"
    landmarks = json.loads((lm_dir / "precomputed_landmarks.json").read_text())
    for name in NAMES:
        real = pixels(lm_dir / f"{name}.png")
        np.testing.assert_array_equal(pixels(out / "real" / name / f"{name}.png"), real)
        fake = pixels(out / "fake" / name / f"{name}_sbi0.png")
        assert fake.shape == real.shape
        diff = np.abs(fake - real).max(-1)
        inside, dist = hull_distance(landmarks[f"{name}.png"])
        far = dist > 60  # the deformed, blurred mask reaches a little past the hull
        assert far.sum() > 20000
        assert diff[inside].mean() > 1.0  # the face is altered
        assert diff[far].mean() < 0.1 and np.percentile(diff[far], 99.9) <= 2
        changed = diff > 3
        assert changed.sum() > 1000 and (dist[changed] < 60).mean() > 0.99


def test_same_seed_same_bytes_any_workers(tmp_path, lm_dir):
    json_lm = lm_dir / "precomputed_landmarks.json"
    runs = {
        "a": {"seed": 3, "workers": 0},
        "b": {"seed": 3, "workers": 2},
        "c": {"seed": 4, "workers": 0},
    }
    for name, kw in runs.items():
        report = synthesize(
            [lm_dir], tmp_path / name, landmarks=json_lm, per_image=2, progress=False, **kw
        )
        assert report.made == 4
    for name in NAMES:
        for k in (0, 1):
            rel = Path("fake", name, f"{name}_sbi{k}.png")
            a, b, c = ((tmp_path / r / rel).read_bytes() for r in "abc")
            assert a == b
            assert a != c
        # the two fakes of one real differ from each other
        assert (tmp_path / "a" / "fake" / name / f"{name}_sbi0.png").read_bytes() != (
            tmp_path / "a" / "fake" / name / f"{name}_sbi1.png"
        ).read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_text() == (
        tmp_path / "b" / "manifest.csv"
    ).read_text()


def write_prepare_manifest(root: Path, lm_dir: Path) -> Path:
    """Two real crops of two videos with landmarks, plus rows synthesize must leave alone."""
    landmarks = json.loads((lm_dir / "precomputed_landmarks.json").read_text())
    rows = []
    for name, video, split in ((NAMES[0], "vidA", "train"), (NAMES[1], "vidB", "val")):
        rel = f"real/{video}/0000.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lm_dir / f"{name}.png", root / rel)
        rows.append(
            {
                "path": rel,
                "label": "real",
                "video": video,
                "frame": "0",
                "face": "0",
                "box": "[10, 10, 300, 300]",
                "landmarks": json.dumps(landmarks[f"{name}.png"]),
                "score": "0.99",
                "split": split,
                "status": "ok",
                "reason": "",
                "source": "x.mp4",
                "time": "0.0",
            }
        )
    shutil.copy(lm_dir / f"{NAMES[0]}.png", root / "fake.png")
    rows.append({"path": "fake.png", "label": "fake", "video": "vidC", "status": "ok"})
    rows.append(
        {
            "path": "",
            "label": "real",
            "video": "vidA",
            "frame": "5",
            "status": "no_face",
            "reason": "no face",
        }
    )
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PREPARE_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_prepare_manifest_input_keeps_video_and_split(tmp_path, lm_dir):
    manifest = write_prepare_manifest(tmp_path / "crops", lm_dir)
    out = tmp_path / "out"
    # no landmarks file: the manifest's own cells are used; no detector is needed
    report = synthesize(
        [manifest], out, detect=DetectConfig(backend="test-no-face"), progress=False
    )
    assert report.made == 2 and report.skipped == [] and report.by_detector == 0
    rows = read_rows(out / "manifest.csv")
    assert [r["path"] for r in rows] == [
        "real/vidA/0000.png",
        "fake/vidA/0000_sbi0.png",
        "real/vidB/0000.png",
        "fake/vidB/0000_sbi0.png",
    ]
    assert [(r["label"], r["video"], r["split"]) for r in rows] == [
        ("real", "vidA", "train"),
        ("fake", "vidA", "train"),
        ("real", "vidB", "val"),
        ("fake", "vidB", "val"),
    ]
    # the training loader reads it as it is; a real and its fake share the video key
    found = scan([out / "manifest.csv"])
    assert not found.missing
    by_path = {s.path.relative_to(out).as_posix(): s for s in found.samples}
    assert len(by_path) == 4
    real, fake = by_path["real/vidA/0000.png"], by_path["fake/vidA/0000_sbi0.png"]
    assert (real.label, fake.label) == (0, 1)
    assert real.split == fake.split == "train"
    assert real.video.split("/")[-1] == fake.video.split("/")[-1] == "vidA"
    assert real.video.replace("/real/", "/") == fake.video.replace("/fake/", "/")


def test_folder_input_is_scannable_and_corrupt_images_are_skipped(tmp_path, lm_dir):
    data = tmp_path / "data"
    for name in NAMES:
        (data / "real").mkdir(parents=True, exist_ok=True)
        shutil.copy(lm_dir / f"{name}.png", data / "real" / f"{name}.png")
    (data / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (data / "fake").mkdir()
    shutil.copy(lm_dir / f"{NAMES[0]}.png", data / "fake" / "old_fake.png")  # not blended
    (data / "real" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    report = synthesize(
        [data],
        out,
        landmarks=lm_dir / "precomputed_landmarks.json",
        detect=DetectConfig(backend="test-no-face"),
        progress=False,
        keep_real=True,
    )
    assert report.made == 2
    assert len(report.skipped) == 1 and report.skipped[0][0].endswith("broken.png")
    paths = sorted(r["path"] for r in read_rows(out / "manifest.csv"))
    assert not any("old_fake" in p or "broken" in p for p in paths)
    found = scan([out / "manifest.csv"])
    # reals without a split are split here, grouped by video: a real and its fake share a split
    keys = {(s.label, s.video.split("/", 2)[2], s.split) for s in found.samples}
    assert {(label, name) for label, name, _ in keys} == {(lab, n) for lab in (0, 1) for n in NAMES}
    split_of = {}
    for _, name, split in keys:
        assert split in ("train", "val") and split_of.setdefault(name, split) == split
    # an output folder inside the input is not read back as input on a rerun
    inner = data / "synth"
    for _ in range(2):
        report = synthesize(
            [data], inner, landmarks=lm_dir / "precomputed_landmarks.json", progress=False
        )
        assert report.made == 2 and len(read_rows(inner / "manifest.csv")) == 4


def test_detector_fallback_uses_an_ellipse_and_skips_faceless_images(tmp_path, lm_dir):
    img = lm_dir / f"{NAMES[0]}.png"
    report = synthesize(
        [img], tmp_path / "out", detect=DetectConfig(backend="test-fixed-face"), progress=False
    )
    assert report.made == 1 and report.by_detector == 1 and report.notes
    real = pixels(img)
    fake = pixels(tmp_path / "out" / "fake" / NAMES[0] / f"{NAMES[0]}_sbi0.png")
    diff = np.abs(fake - real).max(-1)
    assert diff[140:260, 100:210].mean() > 1.0  # inside the detected face
    assert diff[:40].mean() < 0.1 and diff[:, :15].mean() < 0.1  # far above and beside it
    report = synthesize(
        [img], tmp_path / "none", detect=DetectConfig(backend="test-no-face"), progress=False
    )
    assert report.made == 0 and "no face" in report.skipped[0][1]
    assert read_rows(tmp_path / "none" / "manifest.csv") == []


def test_landmarks_outside_the_image_are_reported(tmp_path, lm_dir):
    lm = tmp_path / "lm.json"
    lm.write_text(json.dumps({f"{NAMES[0]}.png": [[1000, 1000], [1100, 1000], [1050, 1100]]}))
    report = synthesize(
        [lm_dir / f"{NAMES[0]}.png"], tmp_path / "out", landmarks=lm, progress=False
    )
    assert report.made == 0 and "coordinates" in report.skipped[0][1]


def test_load_landmarks_formats(tmp_path, lm_dir):
    shared_lm = load_landmarks(lm_dir / "precomputed_landmarks.json")
    assert set(shared_lm) == {f"{n}.png" for n in NAMES}
    assert shared_lm[f"{NAMES[0]}.png"].shape == (68, 2)
    js = tmp_path / "lm.json"
    js.write_text(
        json.dumps(
            {
                ".\\sub\\a.png": [[0, 0], [5, 0], [0, 5]],
                "b.png": {"landmarks": [[1, 1], [2, 1], [1, 2]]},
            }
        )
    )
    got = load_landmarks(js)
    assert sorted(got) == ["b.png", "sub/a.png"] and got["b.png"].dtype == np.float32
    manifest = write_prepare_manifest(tmp_path / "crops", lm_dir)
    from_csv = load_landmarks(manifest)
    assert sorted(from_csv) == ["real/vidA/0000.png", "real/vidB/0000.png"]
    np.testing.assert_array_equal(from_csv["real/vidA/0000.png"], shared_lm[f"{NAMES[0]}.png"])
    js.write_text(json.dumps({"a.png": [[1, 2]]}))
    with pytest.raises(DataError, match="a.png"):
        load_landmarks(js)
    with pytest.raises(DataError, match="does not exist"):
        load_landmarks(tmp_path / "missing.json")


def test_detected_face_mask():
    kp = np.array([[40, 60], [60, 60], [50, 75], [42, 90], [58, 90]], np.float32)
    mask = detected_face_mask(Face(np.array([20, 30, 80, 110], np.float32), 0.9, kp), (140, 100))
    assert mask.shape == (140, 100) and set(np.unique(mask)) == {0.0, 1.0}
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 50) < 1 and abs(ys.mean() - 70) < 1
    assert mask.sum() == pytest.approx(np.pi * 28.5 * 38, rel=0.03)  # 5% inside the box
    # with a face outline (dlib's 68 points) the mask is its convex hull
    outline = np.array([[10, 10], [60, 10], [60, 60], [10, 60], [35, 35]] * 4, np.float32)
    hull = detected_face_mask(
        Face(np.array([0, 0, 99, 99], np.float32), 0.9, kp, outline), (100, 100)
    )
    assert hull[10:61, 10:61].all() and hull.sum() == 51 * 51


def test_bad_inputs_are_errors(tmp_path, lm_dir):
    with pytest.raises(ConfigError, match="unknown face detector"):
        synthesize([lm_dir], tmp_path / "out", detect=DetectConfig(backend="nope"), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        synthesize([tmp_path / "nope"], tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no real face-crop images"):
        synthesize([tmp_path / "empty"], tmp_path / "out", progress=False)
