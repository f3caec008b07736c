"""The face detector interface: every backend turns a batch of RGB frames into faces.

Backends register by name (``@register_face_detector("mtcnn")``) and are built from a
:class:`~deepfake_detect.config.schema.DetectConfig`; ``prepare`` and ``predict`` only see this
interface. Coordinates are always in pixels of the frame that was passed in.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from deepfake_detect.batching import BatchMerger
from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch


@dataclass
class Face:
    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float  # detector confidence in [0, 1]
    # (5, 2) float32 x, y: left eye, right eye, nose tip, left and right mouth corner (image
    # left/right); what the "align" crop uses. None when the backend gives no landmarks.
    keypoints: np.ndarray | None = None
    # every landmark the backend gives, (K, 2): 5 for MTCNN/RetinaFace, 68 or 81 for dlib
    landmarks: np.ndarray | None = None
    # which detection pass found it (the manifest's "pass" column): fast, low_score, contrast or
    # mtcnn; see deepfake_detect.data.faces.cascade
    found_by: str = "fast"

    @property
    def side(self) -> float:
        """The face's size: the longer side of its box."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    def scaled(self, factor: float) -> Face:
        """The same face in an image resized by ``factor``."""
        return Face(
            box=(self.box * factor).astype(np.float32),
            score=self.score,
            keypoints=None if self.keypoints is None else (self.keypoints * factor).astype(np.float32),
            landmarks=None if self.landmarks is None else (self.landmarks * factor).astype(np.float32),
            found_by=self.found_by,
        )


class FaceDetector(ABC):
    """Detects faces in batches of ``H x W x 3`` uint8 RGB frames (sizes may differ)."""

    name: str = ""
    # Backends looping with detect_in_batches apply this to each shrunk detection image before
    # detecting (the contrast pass sets it on a copy of the detector); None: the plain image.
    enhance: Callable[[np.ndarray], np.ndarray] | None = None

    @abstractmethod
    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """One list of faces per frame, best score first; an empty list when none is found."""


class MergedDetector(FaceDetector):
    """A detector shared by threads: their :meth:`detect` calls that arrive together run as
    one batch of at most ``batch_size`` frames (several videos' frames in one batch), one batch
    at a time. The faces each caller gets are those the inner detector finds in its frames.

    ``detector`` may be a function that builds it: it is built on the first frame detected,
    so that work needing no detection (units reused from an earlier run) loads no face model.
    """

    name = "merged"

    def __init__(self, detector: FaceDetector | Callable[[], FaceDetector], batch_size: int) -> None:
        self._inner = detector
        self._building = threading.Lock()
        self.merger: BatchMerger[np.ndarray, list[Face]] = BatchMerger(self._detect, batch_size)

    @property
    def inner(self) -> FaceDetector:
        with self._building:
            if not isinstance(self._inner, FaceDetector):
                self._inner = self._inner()
            return self._inner

    def _detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        return self.inner.detect(frames)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return self.merger(frames)


_BACKENDS: dict[str, Callable[[DetectConfig], FaceDetector]] = {}
# built-in backends live in modules of this package named after them
_BUILTIN = {"mtcnn": "mtcnn", "dlib": "dlib", "retinaface": "retinaface"}


def check_frame(frame: np.ndarray, index: int = 0) -> np.ndarray:
    """``frame`` as a C-contiguous ``H x W x 3`` uint8 array; a DataError naming it otherwise."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise DataError(
            f"face detection: frame {index} is a {frame.dtype} array of shape {frame.shape}; "
            "detectors take H x W x 3 uint8 RGB frames (convert with PIL .convert('RGB') or "
            "PyAV .to_ndarray(format='rgb24'))"
        )
    return np.ascontiguousarray(frame)


def resize_for_detection(frame: np.ndarray, detect_size: int | None) -> tuple[np.ndarray, float]:
    """Shrink ``frame`` so its longest side is at most ``detect_size`` (None: leave it).

    Returns ``(small, factor)`` with ``factor = original / small`` (>= 1), so a face found in
    ``small`` is ``face.scaled(factor)`` in the original. Frames are never enlarged: small faces
    are the backend's job (its minimum face size), not the resize's.
    """
    height, width = frame.shape[:2]
    longest = max(height, width)
    if detect_size is None or longest <= detect_size:
        return frame, 1.0
    scale = detect_size / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA averages the source pixels: no aliasing, unlike nearest/bilinear at 2-3x shrink
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return small, longest / max(size)


CLAHE_CLIP = 3.0
CLAHE_TILES = (8, 8)


def normalise_contrast(image: np.ndarray) -> np.ndarray:
    """A contrast-normalised copy of an RGB uint8 image for detection in dark and flat frames:
    CLAHE (clip 3, 8 x 8 tiles) on the lightness channel of CIE LAB, colours kept."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES).apply(
        np.ascontiguousarray(lab[..., 0])
    )
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def five_point_faces(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> list[Face]:
    """Faces from a backend whose 5 points already come in ``Face.keypoints`` order."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2)
    return [
        Face(box=b, score=float(s), keypoints=p, landmarks=p.copy())
        for b, s, p in zip(boxes, scores, points, strict=True)
    ]


def min_face_pixels(config: DetectConfig, shape: tuple[int, ...], factor: float) -> float:
    """Smallest face side to search, in pixels of a detection image of ``shape`` (shrunk by
    ``factor`` = original / shrunk): ``min_face`` or ``min_face_fraction`` of the shorter
    original side, whichever is larger."""
    short = min(shape[0], shape[1]) * factor
    return max(float(config.min_face), config.min_face_fraction * short) / factor


def group_by_shape(
    images: Sequence[np.ndarray], factors: Sequence[float]
) -> dict[tuple, list[int]]:
    """Indices of the images that can share one batch: same shape and same resize factor."""
    groups: dict[tuple, list[int]] = {}
    for i, (image, factor) in enumerate(zip(images, factors)):
        groups.setdefault((image.shape, factor), []).append(i)
    return groups


def finish_faces(faces: list[Face], min_score: float, factor: float = 1.0) -> list[Face]:
    """Drop faces scoring below ``min_score``, sort best first, map to original-frame pixels."""
    kept = sorted((f for f in faces if f.score >= min_score), key=lambda f: -f.score)
    return [f.scaled(factor) if factor != 1.0 else f for f in kept]


def detect_in_batches(
    frames: Sequence[np.ndarray],
    config: DetectConfig,
    detect_batch: Callable[[np.ndarray, float], list[list[Face]]],
    enhance: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[list[Face]]:
    """The loop shared by batched backends.

    Frames go in chunks of ``config.batch_size``, are shrunk to ``config.detect_size`` (then
    passed through ``enhance``, if given) and grouped by shrunk size; ``detect_batch(batch (N, h,
    w, 3) uint8, factor)`` finds faces in pixels of the shrunk images (``factor`` = original /
    shrunk, for converting ``min_face``). The results are filtered by ``min_score``, sorted best
    first and mapped back to original-frame pixels.
    """
    results: list[list[Face]] = []
    for start in range(0, len(frames), config.batch_size):
        stop = start + config.batch_size
        chunk = [check_frame(f, start + i) for i, f in enumerate(frames[start:stop])]
        shrunk = [resize_for_detection(frame, config.detect_size) for frame in chunk]
        if enhance is not None:
            shrunk = [(enhance(small), factor) for small, factor in shrunk]
        images = [small for small, _ in shrunk]
        factors = [factor for _, factor in shrunk]
        found: list[list[Face]] = [[] for _ in chunk]
        for (_, factor), indices in group_by_shape(images, factors).items():
            faces = detect_batch(np.stack([images[i] for i in indices]), factor)
            for i, faces_i in zip(indices, faces):
                found[i] = finish_faces(faces_i, config.min_score, factor)
        results.extend(found)
    return results


def detection_device(device: str) -> torch.device:
    """``prepare.detect.device`` as a torch device: "auto" is CUDA when there is one, else CPU."""
    import torch  # only the torch backends need it; dlib does not

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"prepare.detect.device: {device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"prepare.detect.device: {device!r} asked for, but CUDA is not available here; "
            "use auto or cpu"
        )
    return resolved


def register_face_detector(name: str) -> Callable:
    """Class or factory decorator: ``factory(config: DetectConfig) -> FaceDetector``."""

    def add(factory: Callable[[DetectConfig], FaceDetector]) -> Callable[[DetectConfig], FaceDetector]:
        if name in _BACKENDS:
            raise ValueError(f"face detector {name!r} is already registered")
        _BACKENDS[name] = factory
        return factory

    return add


def face_detector_names() -> list[str]:
    return sorted(set(_BACKENDS) | set(_BUILTIN))


def check_detect_config(config: DetectConfig) -> None:
    """Refuse an unknown backend or device now, before any file is read (a worker building the
    detector later would fail once per video)."""
    if config.backend not in face_detector_names():
        raise ConfigError(
            f"prepare.detect.backend: unknown face detector {config.backend!r}; choose one of "
            f"{', '.join(face_detector_names())}"
        )
    if config.backend in _TORCH_BACKENDS:
        detection_device(config.device)


_TORCH_BACKENDS = ("mtcnn", "retinaface")


def build_face_detector(config: DetectConfig | None = None) -> FaceDetector:
    """The backend ``config.backend``, ready to detect."""
    config = config or DetectConfig()
    name = config.backend
    if name not in _BACKENDS and name in _BUILTIN:
        importlib.import_module(f"{__package__}.{_BUILTIN[name]}")
    if name not in _BACKENDS:
        raise ConfigError(
            f"prepare.detect.backend: unknown face detector {name!r}; choose one of "
            f"{', '.join(face_detector_names())}"
        )
    return _BACKENDS[name](config)
