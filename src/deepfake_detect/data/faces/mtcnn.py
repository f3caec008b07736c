"""MTCNN face detection (the default backend): facenet-pytorch's batched P/R/O-Net cascade.

The three small networks' weights ship inside the facenet-pytorch wheel, so this backend works
offline and needs no ``model_path``. facenet-pytorch batches only images of one size, so the
frames of a chunk are grouped by their (shrunk) size and each group is one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    detect_in_batches,
    detection_device,
    five_point_faces,
    min_face_pixels,
    register_face_detector,
)

# P-Net looks at 12 x 12 windows; a smaller minimum face would make the image pyramid enlarge the
# frame, which costs a lot and finds little.
MTCNN_MIN_FACE = 12


class MTCNNDetector(FaceDetector):
    """Faces with 5 keypoints (left eye, right eye, nose, left and right mouth corner)."""

    name = "mtcnn"

    def __init__(self, config: DetectConfig):
        from facenet_pytorch import MTCNN  # heavy import, only for this backend

        self.config = config
        self.device = detection_device(config.device)
        self._net = MTCNN(
            keep_all=True,
            device=self.device,
            min_face_size=MTCNN_MIN_FACE,  # set per batch from config.min_face, see _detect_group
            post_process=False,
            select_largest=False,  # keep its probability order; we sort by score anyway
            thresholds=list(config.stage_thresholds),
        )
        self._net.eval()

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return detect_in_batches(frames, self.config, self._detect_group, self.enhance)

    def _detect_group(self, batch: np.ndarray, factor: float) -> list[list[Face]]:
        """Faces in detection-image pixels for a ``(N, H, W, 3)`` uint8 batch of one size."""
        # min_face is in original-frame pixels; the pyramid works in detection-image pixels
        self._net.min_face_size = max(MTCNN_MIN_FACE, min_face_pixels(self.config, batch.shape[1:3], factor))
        if min(batch.shape[1:3]) < self._net.min_face_size:
            # no face of the minimum size fits: facenet-pytorch's image pyramid would be empty
            # and fail (torch.cat of no tensors) instead of finding nothing
            return [[] for _ in range(len(batch))]
        # A 4-D uint8 array goes straight into a tensor inside facenet-pytorch (PIL images would
        # be converted back to arrays first); results are identical either way.
        boxes, probs, points = self._net.detect(batch, landmarks=True)
        out: list[list[Face]] = []
        for image_boxes, image_probs, image_points in zip(boxes, probs, points):
            if image_boxes is None:  # facenet-pytorch's "no face" marker
                out.append([])
                continue
            # MTCNN's points are already in Face.keypoints order, in image coordinates
            out.append(five_point_faces(image_boxes, image_probs, image_points))
        return out


@register_face_detector("mtcnn")
def build_mtcnn(config: DetectConfig) -> MTCNNDetector:
    return MTCNNDetector(config)
