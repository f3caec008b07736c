"""Coarse-to-fine detection: look for big faces first, search small ones only where needed.

A detector's cost grows with (frame side / smallest face)^2, yet ``select: largest`` and
``select: relative`` rarely need small faces: once a face of side L is found, only faces of at
least L (largest) or ``min_relative_size`` x L (relative) can be selected. So a first pass
searches faces of at least ``coarse_fraction`` of the frame's shorter side, and only frames where
it found nothing, or where the selection could include faces below that size, are searched again
at full sensitivity. ``select: all`` always gets the full pass.

Recall first (:class:`RecallFirst`, the default): the fast pass first searches frames shrunk to
``detect.fast_size`` (640) and searches again at ``detect_size`` (960) only the frames where that
found no face scoring ``min_score`` (:class:`TwoSize`; the faces of either count as ``fast``).
A frame where that search found no face scoring ``min_score`` goes through ``detect.fallback`` in
order, until a pass finds a face:

* ``low_score``: faces of the same run scoring at least ``detect.low_score`` (free: the detector
  ran with that threshold and the stronger faces were taken first);
* ``contrast``: the detector again, on a contrast-normalised copy of the shrunk detection image
  (CLAHE on LAB lightness) -- dark and flat frames; crops are still cut from the original pixels;
* ``mtcnn``: MTCNN at full sensitivity (min face 20 px, no minimum fraction, thresholds
  0.6/0.7/0.7), a second detector with different failure modes.

Frames are never enlarged in a fallback (upscaling invented faces on textures). Each face says
which pass found it (``Face.found_by``: fast, low_score, contrast, mtcnn). A frame without a
face pays for every pass.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np

from deepfake_detect.config.schema import CropConfig, DetectConfig
from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    build_face_detector,
    normalise_contrast,
)

PASSES = ("fast", "low_score", "contrast", "mtcnn")
# the mtcnn fallback pass: MTCNN at full sensitivity
MTCNN_PASS = {"min_face": 20, "min_face_fraction": 0.0, "stage_thresholds": (0.6, 0.7, 0.7)}


def redetect(detector: FaceDetector, frames: Sequence[np.ndarray], found: list[list[Face]],
             redo: list[int]) -> int:
    """Replace ``found[i]`` for each index in ``redo`` by ``detector``'s faces of ``frames[i]``
    (one batch of those frames); the number of frames searched again."""
    if redo:
        for i, faces in zip(redo, detector.detect([frames[i] for i in redo]), strict=True):
            found[i] = faces
    return len(redo)


class CoarseToFine(FaceDetector):
    def __init__(
        self, coarse: FaceDetector, fine: FaceDetector, fraction: float, crop: CropConfig,
        min_score: float = 0.0,
    ):
        self.coarse, self.fine, self.fraction, self.crop = coarse, fine, fraction, crop
        self.min_score = min_score  # faces below it (kept for a low_score pass) do not count
        self.name = f"{fine.name}+coarse"
        self.full_passes = 0  # frames that needed the full pass, for reports and tests

    def _needs_full_pass(self, frame: np.ndarray, faces: list[Face]) -> bool:
        faces = [f for f in faces if f.score >= self.min_score]
        if not faces:
            return True
        coarse_min = self.fraction * min(frame.shape[:2])
        largest = max(f.side for f in faces)
        smallest_wanted = largest if self.crop.select == "largest" else self.crop.min_relative_size * largest
        return smallest_wanted < coarse_min

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        found = self.coarse.detect(frames)
        redo = [i for i, faces in enumerate(found) if self._needs_full_pass(frames[i], faces)]
        self.full_passes += redetect(self.fine, frames, found, redo)
        return found


class TwoSize(FaceDetector):
    """The fast pass at two sizes: ``quick`` (frames shrunk to ``detect.fast_size``), then
    ``full`` (``detect_size``) for the frames where ``quick`` found no face scoring
    ``min_score``; those frames keep only ``full``'s faces (weak ones included, for low_score)."""

    def __init__(self, quick: FaceDetector, full: FaceDetector, min_score: float):
        self.quick, self.full, self.min_score = quick, full, min_score
        self.name = full.name
        self.full_size_frames = 0  # frames that needed the detect_size search, for reports

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        found = self.quick.detect(frames)
        weak = [not any(f.score >= self.min_score for f in faces) for faces in found]
        redo = [i for i, missed in enumerate(weak) if missed]
        self.full_size_frames += redetect(self.full, frames, found, redo)
        return found


class RecallFirst(FaceDetector):
    """``first`` (the fast pass), then the fallback passes for frames where it found no face
    scoring ``detect.min_score``; see the module docstring. ``plain`` is the configured detector
    at full sensitivity, reused (with ``enhance`` set) for the contrast pass; the MTCNN pass is
    built on first use."""

    def __init__(self, first: FaceDetector, plain: FaceDetector, detect: DetectConfig):
        self.first, self.plain, self.detect_config = first, plain, detect
        self.fallback = tuple(detect.fallback)
        self.name = f"{first.name}+recall"
        self._mtcnn: FaceDetector | None = None
        self.passes = dict.fromkeys(PASSES, 0)  # frames whose faces each pass found
        self.passes["none"] = 0

    def _contrast(self, frames: list[np.ndarray]) -> list[list[Face]]:
        if _loops_in_batches(self.plain):
            detector = copy.copy(self.plain)  # shares the network; only `enhance` differs
            detector.enhance = normalise_contrast
            return detector.detect(frames)
        # a backend with its own loop: normalise the whole frame (same idea, more pixels)
        return self.plain.detect([normalise_contrast(np.ascontiguousarray(f)) for f in frames])

    def _mtcnn_pass(self, frames: list[np.ndarray]) -> list[list[Face]]:
        if self._mtcnn is None:
            config = self.detect_config.model_copy(
                update={"backend": "mtcnn", "model_path": None, **MTCNN_PASS}
            )
            self._mtcnn = build_face_detector(config)
        return self._mtcnn.detect(frames)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        min_score = self.detect_config.min_score
        found = self.first.detect(frames)
        result: list[list[Face]] = []
        for faces in found:
            strong = [f for f in faces if f.score >= min_score]
            if not strong and "low_score" in self.fallback:
                low = self.detect_config.low_score
                result.append(_tagged([f for f in faces if f.score >= low], "low_score"))
            else:
                result.append(_tagged(strong, "fast"))
        for name, run in (("contrast", self._contrast), ("mtcnn", self._mtcnn_pass)):
            missing = [i for i, faces in enumerate(result) if not faces]
            if name not in self.fallback or not missing:
                continue
            again = run([frames[i] for i in missing])
            for i, faces in zip(missing, again, strict=True):
                result[i] = _tagged([f for f in faces if f.score >= min_score], name)
        for faces in result:
            self.passes[faces[0].found_by if faces else "none"] += 1
        return result


def _tagged(faces: list[Face], found_by: str) -> list[Face]:
    return [dataclasses.replace(f, found_by=found_by) for f in faces]


def _loops_in_batches(detector: FaceDetector) -> bool:
    """Whether ``detector`` honours ``enhance`` (the built-in torch backends do)."""
    from deepfake_detect.data.faces.mtcnn import MTCNNDetector
    from deepfake_detect.data.faces.retinaface import RetinaFaceDetector

    return isinstance(detector, (MTCNNDetector, RetinaFaceDetector))


def build_face_finder(detect: DetectConfig, crop: CropConfig) -> FaceDetector:
    """The face finder prepare, the dataset video cache and predict all use: the configured
    detector, coarse-to-fine when the selection allows it, recall first unless ``detect.fallback``
    is empty."""
    searched = detect
    if "low_score" in detect.fallback and detect.low_score < detect.min_score:
        # one run gives both: faces >= min_score (fast pass) and >= low_score (its fallback)
        searched = detect.model_copy(update={"min_score": detect.low_score})
    plain = build_face_detector(searched)
    first = plain
    fraction = detect.coarse_fraction
    if fraction is not None and crop.select != "all" and fraction > detect.min_face_fraction:
        coarse = build_face_detector(searched.model_copy(update={"min_face_fraction": fraction}))
        first = CoarseToFine(coarse, plain, fraction, crop, min_score=detect.min_score)
    if not detect.fallback:
        return first
    fast_size = detect.fast_size
    if fast_size is not None and (detect.detect_size is None or fast_size < detect.detect_size):
        quick = build_face_detector(searched.model_copy(update={"detect_size": fast_size}))
        first = TwoSize(quick, first, detect.min_score)
    return RecallFirst(first, plain, detect)
