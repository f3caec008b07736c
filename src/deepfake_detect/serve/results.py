"""The JSON answer for one analysed file, from ``predict``'s :class:`MediaResult`.

``p_fake`` is the file score ``predict`` reports for the same file and aggregation; the verdict
applies the checkpoint's threshold with ``predict``'s rule (fake when P(fake) > threshold).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from deepfake_detect.inference.aggregation import AGGREGATORS
from deepfake_detect.inference.decisions import predict_labels
from deepfake_detect.inference.media_scoring import FaceScore, MediaResult


def verdict(score: float | None, threshold: float) -> str | None:
    if score is None:
        return None
    return "fake" if int(predict_labels([score], threshold)[0]) == 1 else "real"


def png_data_url(image: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def face_rows(faces: list[FaceScore], heatmaps: list[np.ndarray] | None) -> list[dict[str, Any]]:
    rows = []
    for i, f in enumerate(faces):
        row: dict[str, Any] = {"frame": f.frame, "time": f.time, "face": f.face, "box": f.box,
                               "score": f.score}
        if f.score_std is not None:
            row["score_std"] = f.score_std
        if heatmaps is not None and i < len(heatmaps):
            row["heatmap"] = png_data_url(heatmaps[i])
        rows.append(row)
    return rows


def frame_rows(faces: list[FaceScore], aggregation: str) -> list[dict[str, Any]]:
    """One row per frame with a face: its time and the aggregation of its faces' scores."""
    aggregate = AGGREGATORS[aggregation]
    by_frame: dict[int, list[FaceScore]] = {}
    for f in faces:
        by_frame.setdefault(f.frame, []).append(f)
    rows = []
    for frame in sorted(by_frame):
        group = by_frame[frame]
        scores = np.asarray([f.score for f in group], dtype=np.float64)
        ids = np.asarray([str(frame)] * len(group), dtype=object)
        rows.append({"frame": frame, "time": group[0].time, "faces": len(group),
                     "score": float(aggregate(scores, ids))})
    return rows


def result_json(result: MediaResult, *, media: str, filename: str, aggregation: str,
                options: dict[str, Any], threshold: float, calibrated: bool, card: dict[str, Any],
                heatmaps: list[np.ndarray] | None, timings: dict[str, float],
                notes: list[str]) -> dict[str, Any]:
    score = result.score
    out: dict[str, Any] = {
        "status": "ok" if score is not None else "no_face",
        "verdict": verdict(score, threshold),
        "p_fake": score,
        "threshold": threshold,
        "calibrated": calibrated,
        "media": media,
        "filename": filename,
        "options": options,
        "counts": {"frames": result.frames, "faces": result.faces},
        "faces": face_rows(result.per_face, heatmaps),
        "frames": frame_rows(result.per_face, aggregation),
        "model": card,
        "timings": {k: round(max(v, 0.0), 4) for k, v in timings.items()},
    }
    if result.score_std is not None:
        out["score_std"] = result.score_std
    if score is None:
        out["message"] = result.error.partition(":")[2].strip() or "no face found"
    if notes:
        out["notes"] = notes
    return out
