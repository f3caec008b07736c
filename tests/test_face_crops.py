"""Face crops (box and 5-point align), face selection, tracking and crop encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deepfake_detect.config.schema import CropConfig
from deepfake_detect.data.faces.base import Face
from deepfake_detect.data.faces.crop import (
    ARCFACE_TEMPLATE,
    align_matrix,
    align_template,
    crop_align,
    crop_box,
    crop_face,
    crop_transform,
    encode_crop,
    select_faces,
    square_box,
    transform_points,
    warp_crop,
)
from deepfake_detect.data.faces.track import FaceTracker, iou
from deepfake_detect.errors import ConfigError


def face(x1, y1, x2, y2, keypoints=None, score=0.99) -> Face:
    kp = None if keypoints is None else np.asarray(keypoints, np.float32)
    return Face(np.array([x1, y1, x2, y2], np.float32), score, kp)


def white_square_frame(h=300, w=400, box=(100, 80, 200, 180)) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 255
    return frame


def white_extent(crop: np.ndarray) -> tuple[float, float, float, float]:
    """Sub-pixel edges of the white area: its centroid and its width/height from the mass."""
    m = crop[..., 0].astype(np.float64) / 255
    ys, xs = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    total = m.sum()
    cx, cy = (m * xs).sum() / total, (m * ys).sum() / total
    width = m.sum(1).max()  # the widest row, in pixels of coverage
    height = m.sum(0).max()
    return cx, cy, width, height


# ------------------------------------------------------------------------ box crops


def test_square_box_is_centred_and_scaled_by_margin():
    box = square_box(np.array([10, 20, 50, 100], np.float32), 1.3)
    np.testing.assert_allclose(box, [30 - 52, 60 - 52, 30 + 52, 60 + 52], atol=1e-4)


@pytest.mark.parametrize("size", [65, 130, 260])  # shrink (area path), 1:1, enlarge
@pytest.mark.parametrize("margin", [1.0, 1.3, 2.0])
def test_box_crop_centre_and_scale(size, margin):
    frame = white_square_frame()
    crop = crop_box(frame, face(100, 80, 200, 180), margin, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    cx, cy, width, height = white_extent(crop)
    # the face box is centred and covers 1/margin of the crop
    assert abs(cx - (size - 1) / 2) < 0.3 and abs(cy - (size - 1) / 2) < 0.3
    assert abs(width - size / margin) < 1.0 and abs(height - size / margin) < 1.0


def test_box_crop_of_whole_frame_at_same_size_is_the_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    crop = crop_box(frame, face(0, 0, 64, 64), 1.0, 64)
    np.testing.assert_array_equal(crop, frame)


def test_non_square_box_uses_longer_side():
    frame = white_square_frame(box=(150, 60, 190, 200))  # 40 wide, 140 tall
    crop = crop_box(frame, face(150, 60, 190, 200), 1.0, 140)
    cx, _cy, width, height = white_extent(crop)
    assert abs(height - 140) < 1 and abs(width - 40) < 1
    assert abs(cx - 69.5) < 0.3


def test_out_of_frame_parts_are_zero_and_shape_is_fixed():
    frame = np.full((100, 100, 3), 200, np.uint8)
    # a face in the top-left corner: the square (-20..60) reaches 20 px beyond the frame
    crop = crop_box(frame, face(-10, -10, 50, 50), 4 / 3, 80)
    assert crop.shape == (80, 80, 3)
    # beyond the frame: zeros, not stretched edge pixels
    assert (crop[:19] == 0).all() and (crop[:, :19] == 0).all()
    assert (crop[21:, 21:] == 200).all()
    # shrinking path, face partly outside on the right and bottom
    crop = crop_box(frame, face(60, 60, 160, 160), 1.0, 20)
    assert crop.shape == (20, 20, 3)
    assert (crop[:7, :7] == 200).all() and (crop[9:, 9:] == 0).all()
    # wholly outside the frame, enlarging and shrinking
    for size in (200, 16):
        crop = crop_box(frame, face(300, 300, 340, 340), 1.3, size)
        assert crop.shape == (size, size, 3) and not crop.any()


def test_area_path_has_the_same_geometry_as_a_direct_warp():
    # On a linear ramp, area averaging and bilinear sampling agree, so any shift or scale error
    # in the two-stage (reduce, then warp) path would show as a level difference.
    ys, xs = np.mgrid[0:600, 0:800].astype(np.float32)
    frame = np.stack([xs * 0.3, ys * 0.4, (xs + ys) * 0.15], -1).astype(np.uint8)
    theta = np.radians(25)
    c, s = np.cos(theta) * 0.3, np.sin(theta) * 0.3
    m = np.array([[c, -s, -40.0], [s, c, -120.0]])
    got = warp_crop(frame, m, 96).astype(int)
    want = cv2.warpAffine(frame, m, (96, 96), flags=cv2.INTER_LINEAR).astype(int)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(got[inner] - want[inner]).max() <= 1


# ------------------------------------------------------------------------ align crops


def test_align_margin_one_is_the_template_scaled():
    np.testing.assert_allclose(align_template(1.0, 112), ARCFACE_TEMPLATE, atol=1e-5)
    np.testing.assert_allclose(align_template(1.0, 224), ARCFACE_TEMPLATE * 2, atol=1e-4)
    # a margin shrinks the template about the crop centre
    t = align_template(1.3, 112)
    np.testing.assert_allclose((t - 56) * 1.3, ARCFACE_TEMPLATE - 56, atol=1e-4)


def test_align_with_template_keypoints_is_identity():
    m = align_matrix(ARCFACE_TEMPLATE, 1.0, 112)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    crop = crop_align(frame, face(20, 30, 90, 110, ARCFACE_TEMPLATE), 1.0, 112)
    np.testing.assert_array_equal(crop, frame)


_DOT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def dotted_face(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A 480x480 frame with a coloured dot at each keypoint of a face rotated by ``angle``."""
    kp = ARCFACE_TEMPLATE * 2.5 + [100, 120]  # a 280 px face
    rot = cv2.getRotationMatrix2D((240.0, 240.0), angle, 1.0)
    kp = transform_points(kp, rot)
    frame = np.zeros((480, 480, 3), np.uint8)
    for (x, y), colour in zip(kp, _DOT_COLOURS):
        cv2.circle(frame, (round(x * 16), round(y * 16)), 9 * 16, colour, -1, cv2.LINE_AA, shift=4)
    return frame, kp


@pytest.mark.parametrize("size", [128, 400])  # shrink and enlarge
def test_rotated_face_comes_out_upright(size):
    frame, kp = dotted_face(30.0)
    f = face(*kp.min(0), *kp.max(0), keypoints=kp)
    crop_cfg = CropConfig(mode="align", margin=1.3, size=size)
    m = crop_transform(frame.shape, f, crop_cfg)
    target = align_template(1.3, size)
    np.testing.assert_allclose(transform_points(kp, m), target, atol=1.0)
    crop = crop_face(frame, f, crop_cfg)
    assert crop.shape == (size, size, 3)
    # the pixels moved with the matrix: each dot's centroid lands on its template point
    for (tx, ty), colour in zip(target, _DOT_COLOURS):
        match = np.all(np.abs(crop.astype(int) - colour) < 60, axis=-1)
        ys, xs = np.nonzero(match)
        assert len(xs) > 10
        assert abs(xs.mean() - tx) < 1.0 and abs(ys.mean() - ty) < 1.0


def test_align_without_keypoints_falls_back_to_box():
    frame = white_square_frame()
    f = face(100, 80, 200, 180)
    want = crop_box(frame, f, 1.3, 96)
    np.testing.assert_array_equal(crop_align(frame, f, 1.3, 96), want)
    np.testing.assert_array_equal(crop_face(frame, f, CropConfig(mode="align", size=96)), want)
    # coinciding keypoints are unusable too
    f.keypoints = np.full((5, 2), 150, np.float32)
    np.testing.assert_array_equal(crop_align(frame, f, 1.3, 96), want)


def test_box_transform_maps_landmarks_into_the_crop():
    f = face(100, 80, 200, 180)
    m = crop_transform((300, 400, 3), f, CropConfig(mode="box", margin=1.0, size=50))
    # box edges map to crop edges; pixel centres of the box's corner pixels to crop corner pixels
    np.testing.assert_allclose(
        transform_points([[99.5, 79.5], [199.5, 179.5]], m), [[-0.5, -0.5], [49.5, 49.5]], atol=1e-5
    )
    np.testing.assert_allclose(transform_points([[100.5, 80.5]], m), [[0.0, 0.0]], atol=1e-5)


def test_unknown_mode_is_a_config_error():
    bad = CropConfig.model_construct(mode="bogus", margin=1.3, size=64)
    with pytest.raises(ConfigError, match="mode"):
        crop_transform((10, 10, 3), face(0, 0, 5, 5), bad)


# ------------------------------------------------------------------------ selection


def test_select_faces_modes():
    big, mid, small = face(0, 0, 100, 100), face(0, 0, 60, 60), face(0, 0, 30, 30)
    faces = [small, big, mid]  # score order, not size order
    assert select_faces(faces, CropConfig(select="largest")) == [big]
    assert select_faces([], CropConfig(select="largest")) == []
    assert select_faces(faces, CropConfig(select="all")) == [big, mid, small]
    assert select_faces(faces, CropConfig(select="relative", min_relative_size=0.5)) == [big, mid]
    assert select_faces(faces, CropConfig(select="relative", min_relative_size=0.3)) == [
        big,
        mid,
        small,
    ]
    assert select_faces([], CropConfig(select="relative")) == []


# ------------------------------------------------------------------------ tracking


def test_iou():
    a = np.array([0, 0, 10, 10])
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, np.array([5, 0, 15, 10])) == pytest.approx(50 / 150)
    assert iou(a, np.array([20, 20, 30, 30])) == 0.0
    assert iou(a, np.array([3, 3, 3, 8])) == 0.0  # no area


def test_tracker_keeps_ids_through_motion_swaps_and_gaps():
    tracker = FaceTracker(iou_threshold=0.3, max_gap=2)
    left, right = face(10, 10, 60, 60), face(200, 10, 250, 60)
    assert tracker.update([left, right]) == [0, 1]
    # both move a little and the detector lists them the other way round
    left2, right2 = face(14, 12, 64, 62), face(195, 8, 245, 58)
    assert tracker.update([right2, left2]) == [1, 0]
    # the left face is missed for one frame; a new face appears
    newcomer = face(100, 150, 140, 190)
    assert tracker.update([right2, newcomer]) == [1, 2]
    # the left face is back near where it was last seen
    assert tracker.update([face(16, 12, 66, 62), right2, newcomer]) == [0, 1, 2]
    assert tracker.num_tracks == 3


def test_tracker_ends_tracks_after_max_gap():
    tracker = FaceTracker(max_gap=1)
    f = face(10, 10, 60, 60)
    assert tracker.update([f]) == [0]
    assert tracker.update([]) == []
    assert tracker.update([]) == []  # missed twice > max_gap: the track is gone
    assert tracker.update([f]) == [1]
    tracker.reset()
    assert tracker.update([f]) == [0]


def test_tracker_gives_each_track_at_most_one_face():
    tracker = FaceTracker()
    assert tracker.update([face(0, 0, 50, 50)]) == [0]
    # two faces overlap the old one; the better match keeps the id
    assert tracker.update([face(20, 0, 70, 50), face(2, 0, 52, 50)]) == [1, 0]


# ------------------------------------------------------------------------ encoding


def test_encode_crop_round_trips():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:64, 0:64]
    img = np.stack([xs * 4, ys * 4, 128 + 0 * xs], -1).astype(np.uint8)
    img[20:30, 20:30] = rng.integers(0, 256, (10, 10, 3))
    png = encode_crop(img, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    np.testing.assert_array_equal(back, img)  # lossless, and still RGB
    jpg = encode_crop(img, "jpg", 95)
    assert jpg[:2] == b"\xff\xd8"
    back = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    smooth = (slice(35, None), slice(35, None))
    assert np.abs(back[smooth].astype(int) - img[smooth]).mean() < 2
    # channel order survives: red stays red
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    back = cv2.imdecode(np.frombuffer(encode_crop(red, "jpg", 90), np.uint8), cv2.IMREAD_COLOR)
    assert back[..., 2].mean() > 240 and back[..., 0].mean() < 15  # BGR on decode
    with pytest.raises(ConfigError):
        encode_crop(img, "gif")
