"""dlib face detection: the HOG frontal face detector plus a 68- or 81-point shape predictor.

This is the detector/landmark pair of the FaceForensics++ / DeepfakeBench preprocessing. dlib is
optional (``pip install dlib``; it builds from source) and imported only when this backend is
built. ``prepare.detect.model_path`` names the shape predictor ``.dat`` file.

dlib's HOG detector runs on the CPU, one frame at a time; ``device`` and ``batch_size`` do not
apply. Its scores are SVM margins (detections above 0 by default), mapped to [0, 1] by
:func:`dlib_score_to_probability` so that ``min_score`` means the same kind of thing as for the
other backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    check_frame,
    finish_faces,
    min_face_pixels,
    register_face_detector,
    resize_for_detection,
)
from deepfake_detect.errors import ConfigError

PREDICTOR_HELP = (
    "download http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2 and unpack it "
    "(bunzip2), or get shape_predictor_81_face_landmarks.dat (as used by DeepfakeBench) from "
    "github.com/codeniko/shape_predictor_81_face_landmarks; then set prepare.detect.model_path "
    "to the .dat file"
)
# The HOG detector scans an 80 x 80 window; one 2x upsampling finds faces down to about 40 px.
HOG_WINDOW = 80
# Logistic mapping of a margin s: p = 1 / (1 + exp(-(SLOPE * s + OFFSET))). OFFSET = ln 9 puts
# dlib's own threshold (s = 0) at p = 0.9, the default min_score; SLOPE = 4 sends a typical clear
# face (s >= 0.5) above 0.98 and a marginal one (s = -0.5) to about 0.55.
SCORE_SLOPE = 4.0
SCORE_OFFSET = math.log(9.0)
# lowest margin asked of dlib, however low min_score is: below it dlib returns mostly clutter
MIN_MARGIN = -2.0
# 68-point scheme (the 81-point model shares the first 68): image-left eye is the subject's right
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54


def dlib_score_to_probability(margin: float) -> float:
    """dlib detector margin -> [0, 1] (logistic; margin 0, dlib's default threshold, is 0.9)."""
    return 1.0 / (1.0 + math.exp(-(SCORE_SLOPE * margin + SCORE_OFFSET)))


def probability_to_dlib_score(probability: float) -> float:
    """Inverse of :func:`dlib_score_to_probability`, for dlib's ``adjust_threshold``."""
    p = min(max(probability, 1e-6), 1 - 1e-6)
    return max(MIN_MARGIN, (math.log(p / (1 - p)) - SCORE_OFFSET) / SCORE_SLOPE)


def keypoints_from_68(points: np.ndarray) -> np.ndarray:
    """Face.keypoints (5, 2) from a 68-point (or 81-point) dlib shape."""
    return np.stack(
        [
            points[LEFT_EYE].mean(axis=0),
            points[RIGHT_EYE].mean(axis=0),
            points[NOSE_TIP],
            points[MOUTH_LEFT],
            points[MOUTH_RIGHT],
        ]
    ).astype(np.float32)


def _import_dlib() -> ModuleType:
    try:
        import dlib
    except ImportError:
        raise ConfigError(
            "prepare.detect.backend: the dlib backend needs the dlib package, which is not "
            "installed: pip install dlib (it compiles from source: needs cmake and a C++ "
            "compiler), "
            "or use the built-in mtcnn backend"
        ) from None
    return dlib


def _shape_points(shape) -> np.ndarray:
    return np.array(
        [(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float32
    )


class DlibDetector(FaceDetector):
    """Faces with 5 keypoints derived from the predictor's 68 (or 81) landmarks."""

    name = "dlib"

    def __init__(self, config: DetectConfig):
        dlib = _import_dlib()
        if config.model_path is None:
            raise ConfigError(
                "prepare.detect.model_path: the dlib backend needs a shape predictor; "
                + PREDICTOR_HELP
            )
        path = Path(config.model_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"prepare.detect.model_path: {path} does not exist; {PREDICTOR_HELP}")
        self.config = config
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise ConfigError(
                f"prepare.detect.model_path: {path} is not a dlib shape predictor ({exc}); "
                + PREDICTOR_HELP
            ) from None
        # How many points the model gives is only known from a prediction: try it once on a blank.
        probe = self._predictor(np.zeros((64, 64, 3), np.uint8), dlib.rectangle(0, 0, 63, 63))
        self.num_points = probe.num_parts
        if self.num_points < 68:
            raise ConfigError(
                f"prepare.detect.model_path: {path} predicts {self.num_points} points; the dlib "
                f"backend needs a 68- or 81-point model; {PREDICTOR_HELP}"
            )
        self._adjust = probability_to_dlib_score(config.min_score)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(check_frame(frame, i)) for i, frame in enumerate(frames)]

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        small, factor = resize_for_detection(frame, self.config.detect_size)
        # upsample once when the smallest wanted face is below the detector's window
        upsample = 1 if min_face_pixels(self.config, small.shape, factor) < HOG_WINDOW else 0
        rects, margins, _ = self._detector.run(small, upsample, self._adjust)
        faces = []
        for rect, margin in zip(rects, margins):
            points = _shape_points(self._predictor(small, rect))
            # dlib rectangles are inclusive: right() is the last pixel column inside the box
            box = np.array(
                [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float32
            )
            faces.append(
                Face(
                    box=box,
                    score=dlib_score_to_probability(float(margin)),
                    keypoints=keypoints_from_68(points),
                    landmarks=points,
                )
            )
        return finish_faces(faces, self.config.min_score, factor)


@register_face_detector("dlib")
def build_dlib(config: DetectConfig) -> DlibDetector:
    return DlibDetector(config)
