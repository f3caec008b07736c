"""Frame scores to video scores, grouped by the true video id.

Videos are grouped by the exact id string the data source assigned (never by a folder name), so
two videos called "000" from different datasets or folders stay apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.inference.decisions import to_numpy

# An aggregator gets one video's frame scores and, when known, the frame id of each score (several
# faces can share a frame); strategies such as SBI's max-per-frame need the latter.
Aggregator = Callable[[np.ndarray, "np.ndarray | None"], float]

AGGREGATORS: dict[str, Aggregator] = {}


def register_aggregator(name: str) -> Callable[[Aggregator], Aggregator]:
    def add(fn: Aggregator) -> Aggregator:
        if name in AGGREGATORS:
            raise ValueError(f"video aggregator {name!r} is already registered")
        AGGREGATORS[name] = fn
        return fn

    return add


@register_aggregator("mean")
def _mean(scores: np.ndarray, frames: np.ndarray | None = None) -> float:
    return float(np.mean(scores))


@register_aggregator("max")
def _max(scores: np.ndarray, frames: np.ndarray | None = None) -> float:
    return float(np.max(scores))


@register_aggregator("median")
def _median(scores: np.ndarray, frames: np.ndarray | None = None) -> float:
    return float(np.median(scores))


@register_aggregator("sbi")
def _max_face_then_mean(scores: np.ndarray, frames: np.ndarray | None = None) -> float:
    """SBI's rule: the most suspicious face of each frame, then the mean over frames."""
    if frames is None:
        return float(np.mean(scores))
    per_frame: dict[str, float] = {}
    for score, frame in zip(scores.tolist(), frames.tolist(), strict=True):
        per_frame[frame] = max(score, per_frame.get(frame, -np.inf))
    return float(np.mean(list(per_frame.values())))


# DFDC winner's "confident strategy" constants (FACTS.md)
CONFIDENT_T = 0.8
CONFIDENT_LOW = 0.2


@register_aggregator("confident")
def _confident(scores: np.ndarray, frames: np.ndarray | None = None) -> float:
    """Trust a confident majority: mean of the many sure-fake faces, else of the sure-real ones."""
    n = scores.size
    sure_fake = scores[scores > CONFIDENT_T]
    if sure_fake.size > n / 2.5 and sure_fake.size > 11:
        return float(np.mean(sure_fake))
    sure_real = scores[scores < CONFIDENT_LOW]
    if sure_real.size > 0.9 * n:
        return float(np.mean(sure_real))
    return float(np.mean(scores))


def aggregate_videos(
    videos: Sequence[str],
    labels: Any,
    scores: Any,
    how: str = "mean",
    frames: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(video_ids, video_labels, video_scores), videos in order of first appearance.

    `videos[i]` is the true video id of sample i. A video whose frames carry different labels is
    a data error. `frames` (optional) names the frame of each sample for frame-aware aggregators.
    """
    if how not in AGGREGATORS:
        raise ConfigError(
            f"eval.video_aggregation: unknown aggregation {how!r}; "
            f"choose one of {sorted(AGGREGATORS)}"
        )
    if isinstance(videos, str):
        raise DataError("videos must be a sequence of video ids (one per score), not one string")
    vids = [str(v) for v in videos]
    y = to_numpy(labels, "labels")
    s = to_numpy(scores, "scores").astype(np.float64)
    if not (len(vids) == y.shape[0] == s.shape[0]):
        raise DataError(
            f"videos, labels and scores differ in length: {len(vids)}, {y.shape[0]}, {s.shape[0]}"
        )
    if frames is not None and len(frames) != len(vids):
        raise DataError(f"frames has {len(frames)} entries but there are {len(vids)} scores")
    if not vids:
        raise DataError("no samples to aggregate into videos")

    groups: dict[str, list[int]] = {}
    for i, v in enumerate(vids):
        groups.setdefault(v, []).append(i)
    frame_ids = np.asarray([str(f) for f in frames], dtype=object) if frames is not None else None
    aggregate = AGGREGATORS[how]

    ids, out_labels, out_scores = [], [], []
    for vid, members in groups.items():
        idx = np.asarray(members)
        found = np.unique(y[idx])
        if found.size != 1:
            raise DataError(
                f"video {vid!r} has frames labelled {found.tolist()}: every frame of a video must "
                "carry the same label; check the labels of that video's frames or its video id"
            )
        ids.append(vid)
        out_labels.append(found[0])
        out_scores.append(aggregate(s[idx], frame_ids[idx] if frame_ids is not None else None))
    return ids, np.asarray(out_labels).astype(np.int64), np.asarray(out_scores, dtype=np.float64)
