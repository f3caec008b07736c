"""Coarse-to-fine detection: look for big faces first, search small ones only where needed.

A detector's cost grows with (frame side / smallest face)^2, yet ``select: largest`` and
``select: relative`` rarely need small faces: once a face of side L is found, only faces of at
least L (largest) or ``min_relative_size`` x L (relative) can be selected. So a first pass
searches faces of at least ``coarse_fraction`` of the frame's shorter side, and only frames where
it found nothing, or where the selection could include faces below that size, are searched again
at full sensitivity. ``select: all`` always gets the full pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepfake_detect.config.schema import CropConfig, DetectConfig
from deepfake_detect.data.faces.base import Face, FaceDetector, build_face_detector


class CoarseToFine(FaceDetector):
    def __init__(self, coarse: FaceDetector, fine: FaceDetector, fraction: float, crop: CropConfig):
        self.coarse, self.fine, self.fraction, self.crop = coarse, fine, fraction, crop
        self.name = f"{fine.name}+coarse"
        self.full_passes = 0  # frames that needed the full pass, for reports and tests

    def _needs_full_pass(self, frame: np.ndarray, faces: list[Face]) -> bool:
        if not faces:
            return True
        coarse_min = self.fraction * min(frame.shape[:2])
        largest = max(f.side for f in faces)
        smallest_wanted = largest if self.crop.select == "largest" else self.crop.min_relative_size * largest
        return smallest_wanted < coarse_min

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        found = self.coarse.detect(frames)
        redo = [i for i, faces in enumerate(found) if self._needs_full_pass(frames[i], faces)]
        if redo:
            self.full_passes += len(redo)
            for i, faces in zip(redo, self.fine.detect([frames[i] for i in redo]), strict=True):
                found[i] = faces
        return found


def build_face_finder(detect: DetectConfig, crop: CropConfig) -> FaceDetector:
    """The configured detector, wrapped coarse-to-fine when the selection allows it."""
    fine = build_face_detector(detect)
    fraction = detect.coarse_fraction
    if fraction is None or crop.select == "all" or fraction <= detect.min_face_fraction:
        return fine
    coarse = build_face_detector(detect.model_copy(update={"min_face_fraction": fraction}))
    return CoarseToFine(coarse, fine, fraction, crop)
