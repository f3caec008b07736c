"""Face tracks across the sampled frames of one video, so each person's crops share an id.

Detectors return faces per frame in score order, which changes from frame to frame; a tracker
links each face to the face of a previous frame it overlaps most, so that ``face`` in the prepare
manifest names the same person throughout a video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepfake_detect.data.faces.base import Face


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes (0 when either has no area)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a[:4])
    bx1, by1, bx2, by2 = (float(v) for v in b[:4])
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union -= inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: np.ndarray  # the box at the last frame the face was seen
    missed: int = 0  # consecutive frames without the face since then


class FaceTracker:
    """Gives each face a track id by greedy IoU matching with the tracks of earlier frames.

    Each :meth:`update` (one frame) matches faces to live tracks, highest IoU first, when the
    IoU with the track's last box is at least ``iou_threshold``. A track whose face is missing
    stays matchable for ``max_gap`` further frames (a missed detection, a hand over the face),
    then ends. Unmatched faces start new tracks; ids count up from 0 in order of creation and
    are never reused. Sampled frames can be far apart in time, so a fast-moving face may start
    a new track: ids are a grouping aid, not identity recognition.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 2) -> None:
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._tracks: list[_Track] = []
        self._next_id = 0

    def reset(self) -> None:
        """Forget all tracks and restart ids at 0 (call between videos)."""
        self._tracks = []
        self._next_id = 0

    @property
    def num_tracks(self) -> int:
        """How many track ids have been given out."""
        return self._next_id

    def update(self, faces: Sequence[Face]) -> list[int]:
        """The track id of each face of the next frame, in the order of ``faces``."""
        pairs = []
        for ti, track in enumerate(self._tracks):
            for fi, face in enumerate(faces):
                overlap = iou(track.box, face.box)
                if overlap >= self.iou_threshold:
                    pairs.append((-overlap, track.id, fi, ti))
        pairs.sort()  # highest IoU first; ties go to the older track, then the earlier face
        ids: list[int | None] = [None] * len(faces)
        taken: set[int] = set()
        for _, _, fi, ti in pairs:
            if ids[fi] is None and ti not in taken:
                ids[fi] = self._tracks[ti].id
                taken.add(ti)
                self._tracks[ti].box = np.asarray(faces[fi].box, dtype=np.float32).copy()
                self._tracks[ti].missed = 0
        for ti, track in enumerate(self._tracks):
            if ti not in taken:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_gap]
        for fi, face in enumerate(faces):
            if ids[fi] is None:
                ids[fi] = self._next_id
                self._tracks.append(_Track(self._next_id, np.asarray(face.box, np.float32).copy()))
                self._next_id += 1
        return [int(i) for i in ids]  # type: ignore[arg-type]
