"""Metrics per group (manipulation method, generator, source) of the fakes.

A detector that reaches 0.95 AUC overall may still miss one method entirely; the per-group
table shows it. Each group is scored as a detection task of its own: that group's fakes
against all the reals of the dataset (the reals' own group, if any, plays no part), at frame
level and, after the video aggregation, at video level, each with bootstrap intervals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.bootstrap import METRICS, bootstrap_intervals
from deepfake_detect.evaluation.metrics import binary_metrics, check_inputs
from deepfake_detect.inference.aggregation import aggregate_videos
from deepfake_detect.outputs import atomic_write

# fakes without a group, when others have one: listed too, so that every fake is in a row
NO_GROUP = "(no group)"
LEVELS = ("frame", "video")


def row_groups(samples_or_groups: Sequence[Sample | str | None]) -> list[str | None]:
    """The group of every row: a Sample's ``group``, or the given names as they are."""
    return [x.group if isinstance(x, Sample) else x for x in samples_or_groups]


def fake_groups(groups: Sequence[str | None], labels: Any) -> list[str]:
    """The groups present among the fakes, sorted; [] when no fake has a group."""
    y = np.asarray(labels)
    named = {g for g, lab in zip(groups, y) if lab == 1 and g is not None}
    if not named:
        return []
    unnamed = any(g is None for g, lab in zip(groups, y) if lab == 1)
    return sorted(named) + ([NO_GROUP] if unnamed else [])


def _with_ci(
    labels: np.ndarray, scores: np.ndarray, threshold: float, clusters: Sequence[str] | None,
    n_boot: int, seed: int,
) -> dict[str, Any]:
    metrics = binary_metrics(labels, scores, threshold=threshold)
    metrics["ci"] = bootstrap_intervals(labels, scores, threshold, clusters=clusters, n=n_boot,
                                        seed=seed)
    return metrics


def group_metrics(
    samples_or_groups: Sequence[Sample | str | None],
    labels: Any,
    scores: Any,
    threshold: float,
    videos: Sequence[str] | None = None,
    frames: Sequence[str] | None = None,
    video_aggregation: str = "mean",
    *,
    rows: str = "frame",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{group: {"n_real", "n_fake", "frame": metrics + "ci", "video": metrics + "ci" +
    "n_videos"}}`` for every group among the fakes ({} when no fake has a group).

    Rows are frames (``rows="frame"``): frame metrics resample ``videos`` (the video id of each
    row; rows without them), and with ``videos`` the video level aggregates the frames
    (``video_aggregation``, ``frames`` for frame-aware rules) once for the whole dataset; a
    video belongs to the group of its first frame. Rows are videos already (``rows="video"``,
    a clip detector): ``frame`` is None and ``videos`` names the rows. ``n_real`` / ``n_fake``
    count the rows of the group's task. ``n_boot`` 0: no intervals (``ci`` None).
    """
    if rows not in LEVELS:
        raise DataError(f"rows must be 'frame' or 'video', got {rows!r}")
    groups = row_groups(samples_or_groups)
    y, s = check_inputs(labels, scores)
    if len(groups) != y.size or (videos is not None and len(videos) != y.size):
        raise DataError("groups, videos, labels and scores must have one entry per row")
    names = fake_groups(groups, y)
    if not names:
        return {}
    key = np.asarray([NO_GROUP if g is None else g for g in groups], dtype=object)
    vid = np.asarray([str(v) for v in videos], dtype=object) if videos is not None else None
    video_table = None
    if rows == "frame" and vid is not None:
        video_table = _video_table(vid, y, s, key, video_aggregation, frames)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        task = (y == 0) | (key == name)
        entry: dict[str, Any] = {"n_real": int(np.sum(task & (y == 0))),
                                 "n_fake": int(np.sum(task & (y == 1))), "frame": None,
                                 "video": None}
        clusters = vid[task].tolist() if vid is not None else None
        level = _with_ci(y[task], s[task], threshold, clusters, n_boot, seed)
        if rows == "video":
            entry["video"] = {**level, "n_videos": int(task.sum())}
        else:
            entry["frame"] = level
        if video_table is not None:
            ids, vy, vs, vkey = video_table
            vtask = (vy == 0) | (vkey == name)
            entry["video"] = {
                **_with_ci(vy[vtask], vs[vtask], threshold, ids[vtask].tolist(), n_boot, seed),
                "n_videos": int(vtask.sum()),
            }
        out[name] = entry
    return out


def _video_table(
    vid: np.ndarray, y: np.ndarray, s: np.ndarray, key: np.ndarray, how: str,
    frames: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, scores, group) per video, the frames aggregated once for all groups."""
    ids, vy, vs = aggregate_videos(vid.tolist(), y, s, how, frames=frames)
    _, first = np.unique(vid, return_index=True)
    group_of = dict(zip(vid[first].tolist(), key[first].tolist()))
    vkey = np.asarray([group_of[v] for v in ids], dtype=object)
    return np.asarray(ids, dtype=object), vy, vs, vkey


def _number(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.6f}"


GROUPS_CSV_COLUMNS = ["group", "level", "n_real", "n_fake", "n_videos"] + [
    col for m in METRICS for col in (m, f"{m}_low", f"{m}_high")
]


def write_groups_csv(path: str | Path, groups: dict[str, dict[str, Any]]) -> Path:
    """One row per group and level: group, level, n_real, n_fake, n_videos (the videos of the
    group's task), then every metric of :data:`METRICS` with its interval (``_low``,
    ``_high``; empty without bootstrap)."""
    path = Path(path)
    lines = [GROUPS_CSV_COLUMNS]
    for name, entry in groups.items():
        n_videos = (entry.get("video") or {}).get("n_videos", "")
        for level in LEVELS:
            m = entry.get(level)
            if m is None:
                continue
            ci = m.get("ci") or {}
            row = [name, level, m["n_real"], m["n_fake"], n_videos]
            for key in METRICS:
                bounds = ci.get(key) or {}
                row += [_number(m[key]), _number(bounds.get("low")), _number(bounds.get("high"))]
            lines.append(row)
    atomic_write(path, _csv_text(lines))
    return path


def _csv_text(lines: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


__all__ = ["GROUPS_CSV_COLUMNS", "NO_GROUP", "fake_groups", "group_metrics", "row_groups",
           "write_groups_csv"]
