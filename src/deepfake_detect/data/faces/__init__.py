"""Face detection backends, face selection and tracking, and crops."""

from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    build_face_detector,
    face_detector_names,
    register_face_detector,
)

__all__ = [
    "Face",
    "FaceDetector",
    "build_face_detector",
    "face_detector_names",
    "register_face_detector",
]
