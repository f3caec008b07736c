"""Face selection and face crops: a square box around the face (FF++ style) or a 5-point alignment.

Every crop is an affine map from frame to crop pixels (:func:`crop_transform`); the same matrix
warps the pixels and maps landmarks into the crop (:func:`transform_points`), so stored landmarks
always match the stored crop. Matrices use OpenCV's pixel convention: pixel ``(i, j)`` has its
centre at ``x = j, y = i``. Face boxes are read as pixel edges (a box ``[0, 0, W, H]`` is the
whole ``W x H`` frame), keypoints and landmarks as pixel-centre coordinates, as detectors give them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from deepfake_detect.config.schema import CropConfig
from deepfake_detect.data.faces.base import Face
from deepfake_detect.errors import ConfigError, DataError

if TYPE_CHECKING:
    from deepfake_detect.data.faces.track import FaceTracker

# Where the ArcFace 112 x 112 crop puts the eyes, nose tip and mouth corners (image left first).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
_TEMPLATE_SIZE = 112.0


def select_faces(faces: Sequence[Face], crop: CropConfig) -> list[Face]:
    """The faces of one frame to crop, largest first.

    ``largest``: only the largest face (an empty list when there is none); ``all``: every face;
    ``relative``: faces whose side is at least ``crop.min_relative_size`` times the largest side,
    which drops small background faces but keeps both people of a two-person shot.
    """
    ordered = sorted(faces, key=lambda f: -f.side)  # stable: ties keep the detector's order
    if not ordered:
        return []
    if crop.select == "largest":
        return ordered[:1]
    if crop.select == "all":
        return ordered
    if crop.select == "relative":
        floor = crop.min_relative_size * ordered[0].side
        return [f for f in ordered if f.side >= floor]
    raise ConfigError(
        f"prepare.crop.select: unknown selection {crop.select!r}; choose largest, all or relative"
    )


def square_box(face_box: np.ndarray, margin: float) -> np.ndarray:
    """The square ``x1, y1, x2, y2`` centred on ``face_box`` with side ``max(w, h) * margin``.

    A margin of 1.3 is the FaceForensics++ crop: some hair, ears and chin around the face, so the
    blending boundary of a face swap is inside the crop.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(face_box, dtype=np.float64)[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * margin / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


def box_matrix(face_box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The 2x3 frame->crop affine of the ``box`` crop: :func:`square_box` onto ``size x size``."""
    x1, y1, x2, _ = (float(v) for v in square_box(face_box, margin))
    side = x2 - x1
    if not side > 0 or not math.isfinite(side):
        raise DataError(f"face box {np.asarray(face_box).tolist()} has no area: cannot crop it")
    s = size / side
    # Box edges map onto crop edges; the half-pixel terms convert edges to OpenCV pixel centres.
    return np.array(
        [[s, 0.0, (0.5 - x1) * s - 0.5], [0.0, s, (0.5 - y1) * s - 0.5]], dtype=np.float64
    )


def align_template(margin: float, size: int) -> np.ndarray:
    """The ArcFace template for a ``size`` crop in which the face covers ``1 / margin`` of it.

    ``dst = ((t / 112 - 0.5) / margin + 0.5) * size``: the template shrinks towards the crop
    centre, so margin 1.0 is exactly the ArcFace template scaled to ``size`` and 1.3 adds about
    15% of context on each side, like the box crop.
    """
    t = ARCFACE_TEMPLATE.astype(np.float64) / _TEMPLATE_SIZE
    return ((t - 0.5) / margin + 0.5) * size


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) taking ``src`` to ``dst``.

    Umeyama's closed form: deterministic, and never a reflection (a mirrored face would still
    look like a face but swap its left and right keypoints).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = float((sc**2).sum()) / len(src)
    if not var_s > 1e-9:
        raise DataError("face keypoints coincide: cannot align the face")
    cov = dc.T @ sc / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sv * d).sum()) / var_s
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def align_matrix(keypoints: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The 2x3 frame->crop affine that puts the 5 ``keypoints`` on :func:`align_template`."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (5, 2) or not np.isfinite(kp).all():
        raise DataError(f"align needs 5 finite (x, y) keypoints, got shape {kp.shape}")
    return similarity_matrix(kp, align_template(margin, size))


def crop_transform(frame_shape: Sequence[int], face: Face, crop: CropConfig) -> np.ndarray:
    """The 2x3 frame->crop affine of ``crop.mode`` for ``face``.

    ``align`` falls back to the ``box`` crop when the face has no keypoints (a detector without
    landmarks) or unusable ones (coinciding or not finite), so every face gets a crop.
    ``frame_shape`` is accepted so that callers need not care which mode needs it.
    """
    del frame_shape  # both crops are defined by the face alone; pixels outside are zeros
    if crop.mode not in ("box", "align"):
        raise ConfigError(f"prepare.crop.mode: unknown mode {crop.mode!r}; choose box or align")
    return _face_matrix(face, crop.mode, crop.margin, crop.size)


def _face_matrix(face: Face, mode: str, margin: float, size: int) -> np.ndarray:
    if mode == "align" and face.keypoints is not None:
        try:
            return align_matrix(face.keypoints, margin, size)
        except DataError:
            pass  # coinciding or broken keypoints: the box still gives a usable crop
    return box_matrix(face.box, margin, size)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points mapped by a 2x3 affine, e.g. frame landmarks into crop coordinates."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def warp_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``frame`` warped by the frame->crop ``matrix`` into ``size x size x 3`` uint8.

    Parts of the crop outside the frame are zeros (a constant border), never stretched edge
    pixels, so a model sees where the frame ended. When the crop shrinks the face, the region is
    first reduced with area averaging (bilinear warping alone would alias on 4K faces) and the
    small remaining scale, rotation and sub-pixel shift are done by the warp; the geometry is
    exactly ``matrix`` either way.
    """
    frame = np.ascontiguousarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise DataError(f"expected an H x W x 3 frame, got shape {frame.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    scale = math.sqrt(abs(float(np.linalg.det(m[:, :2]))))
    if scale >= 0.8:  # little or no shrinking: one warp is sharp and alias-free enough
        flags = cv2.INTER_CUBIC if scale > 1.2 else cv2.INTER_LINEAR
        return _warp(frame, m, size, flags)
    h, w = frame.shape[:2]
    # The frame region the crop sees, with a border for the area filter, clipped to the frame.
    inv = cv2.invertAffineTransform(m)
    corners = transform_points(np.array([[0, 0], [size, 0], [0, size], [size, size]]) - 0.5, inv)
    pad = 2.0 / scale + 2
    x0 = max(0, math.floor(corners[:, 0].min() - pad))
    y0 = max(0, math.floor(corners[:, 1].min() - pad))
    x1 = min(w, math.ceil(corners[:, 0].max() + pad) + 1)
    y1 = min(h, math.ceil(corners[:, 1].max() + pad) + 1)
    if x1 <= x0 or y1 <= y0:  # the crop lies wholly outside the frame
        return np.zeros((size, size, 3), dtype=np.uint8)
    roi = frame[y0:y1, x0:x1]
    rw, rh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = cv2.resize(roi, (rw, rh), interpolation=cv2.INTER_AREA)
    fx, fy = rw / (x1 - x0), rh / (y1 - y0)
    # cv2.resize maps source pixel centre p to f * (p + 0.5) - 0.5; undo it, then apply matrix.
    reduce = np.array([[fx, 0, fx * (0.5 - x0) - 0.5], [0, fy, fy * (0.5 - y0) - 0.5], [0, 0, 1]])
    rest = np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(reduce)
    return _warp(small, rest[:2], size, cv2.INTER_LINEAR)


def _warp(img: np.ndarray, m: np.ndarray, size: int, flags: int) -> np.ndarray:
    out = cv2.warpAffine(
        img, m, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )
    return out.astype(np.uint8, copy=False)


def crop_box(frame: np.ndarray, face: Face, margin: float, size: int) -> np.ndarray:
    """The ``box`` crop: :func:`square_box` resized to ``size x size x 3`` uint8.

    Parts of the square outside the frame (faces at the frame edge) are filled with zeros.
    """
    return warp_crop(frame, box_matrix(face.box, margin, size), size)


def crop_align(frame: np.ndarray, face: Face, margin: float, size: int) -> np.ndarray:
    """The ``align`` crop: the face rotated and scaled onto the ArcFace 5-point template.

    Falls back to :func:`crop_box` when the face has no (usable) keypoints. Outside the frame
    is zeros.
    """
    return warp_crop(frame, _face_matrix(face, "align", margin, size), size)


def crop_face(frame: np.ndarray, face: Face, crop: CropConfig) -> np.ndarray:
    """The crop of ``face`` that ``crop`` asks for (mode, margin, size), ``size x size x 3``."""
    return warp_crop(frame, crop_transform(frame.shape, face, crop), crop.size)


@dataclass
class FaceCrop:
    face: Face
    track: int | None  # track id across frames; None when only the largest face is kept
    matrix: np.ndarray  # frame -> crop affine (2 x 3), e.g. for landmarks in crop pixels
    pixels: np.ndarray  # size x size x 3 uint8


def cut_faces(
    frame: np.ndarray, faces: Sequence[Face], crop: CropConfig, tracker: FaceTracker | None = None
) -> list[FaceCrop]:
    """Select the faces ``crop`` asks for, give them track ids, and cut them out of ``frame``.

    The one path from detections to crops, shared by ``prepare`` and prediction on raw media.
    The tracker is updated on every frame, also when nothing is selected.
    """
    chosen = select_faces(list(faces), crop)
    ids = tracker.update(chosen) if tracker is not None else [None] * len(chosen)
    out = []
    for face, track in zip(chosen, ids, strict=True):
        matrix = crop_transform(frame.shape, face, crop)
        out.append(FaceCrop(face, track, matrix, warp_crop(frame, matrix, crop.size)))
    return out


def encode_crop(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """An RGB uint8 image as PNG (lossless) or JPEG (``quality`` 1-100) file bytes."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "png":
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]
    elif fmt in ("jpg", "jpeg"):
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        raise ConfigError(f"prepare.crop.format: unknown image format {fmt!r}; choose png or jpg")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"encode_crop needs an H x W x 3 uint8 image, got {arr.shape} {arr.dtype}")
    ok, buf = cv2.imencode(ext, cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), params)  # OpenCV is BGR
    if not ok:
        raise DataError(f"OpenCV could not encode a {arr.shape} image as {fmt}")
    return buf.tobytes()
