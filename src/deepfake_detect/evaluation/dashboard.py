"""One-page evaluation dashboard: six panels of one dataset's results in a single PNG.

Panels (row by row): ROC, precision-recall, confusion matrix at the threshold, score histograms
per class, reliability diagram, and a per-video score strip. The drawing code is shared with the
single-plot functions of :mod:`deepfake_detect.evaluation.plots`, so a panel looks the same as
its stand-alone file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.metrics import (
    ECE_BINS,
    check_inputs,
    check_threshold,
    confusion_matrix,
    expected_calibration_error,
    predict_labels,
)
from deepfake_detect.evaluation.plots import (
    _FAKE_COLOR,
    _REAL_COLOR,
    _draw_confusion,
    _draw_pr,
    _draw_reliability,
    _draw_roc,
    _draw_score_histograms,
    _save,
)

# The strip draws at most this many dots per class: beyond a few thousand the dots overlap into
# a solid band anyway, and drawing a million markers makes the PNG slow to write. Larger classes
# are drawn from a fixed-seed uniform sample (without replacement), and the panel title says so.
MAX_STRIP_DOTS = 2000

PANEL_TITLES = (
    "ROC curve",
    "Precision-recall curve",
    "Confusion matrix",
    "Score distribution",
    "Reliability diagram",
    "Score strip",
)


def _draw_score_strip(
    ax: Axes, y: np.ndarray, s: np.ndarray, threshold: float, title: str, unit: str,
    max_dots: int = MAX_STRIP_DOTS, seed: int = 0,
) -> int:
    """One horizontal strip per class, each item's score a dot jittered vertically; returns the
    number of dots drawn (all items, or ``max_dots`` per class sampled when a class is larger)."""
    rng = np.random.default_rng(seed)
    drawn = 0
    sampled = False
    for row, (cls, name, color) in enumerate(((0, "real", _REAL_COLOR), (1, "fake", _FAKE_COLOR))):
        part = s[y == cls]
        if part.size > max_dots:
            part = rng.choice(part, size=max_dots, replace=False)
            sampled = True
        jitter = rng.uniform(-0.3, 0.3, part.size)
        ax.scatter(part, row + jitter, s=10, alpha=0.6, color=color, edgecolors="none",
                   label=f"{name} (n={int(np.sum(y == cls))})")
        drawn += part.size
    ax.axvline(threshold, color="black", ls="--", lw=1.2)
    ax.set_yticks([0, 1], labels=["real", "fake"])
    note = f" ({max_dots} per class sampled)" if sampled else ""
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.6, 1.6), xlabel=f"P(fake) per {unit}",
           title=f"{title}{note}")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="upper center", ncols=2, fontsize="small")
    return drawn


def build_dashboard(
    labels: Any, scores: Any, threshold: float,
    videos: tuple[Sequence[int], Sequence[float]] | None = None,
    title: str = "",
    max_strip_dots: int = MAX_STRIP_DOTS,
) -> Figure:
    """The dashboard figure (not saved): exactly six axes, titled as ``PANEL_TITLES`` (the
    confusion, reliability and strip titles carry the threshold, ECE and unit).

    ``videos`` is ``(video_labels, video_scores)``, the aggregated score of each video (e.g. from
    :func:`~deepfake_detect.inference.aggregation.aggregate_videos`); the strip shows one dot
    per video. Without it the strip shows the per-sample ``scores``. Panels that need both
    classes (ROC, PR) say so inside the panel instead of failing.
    """
    y, s = check_inputs(labels, scores)
    threshold = check_threshold(threshold)
    if videos is not None:
        if len(videos) != 2:
            raise DataError("videos must be (video_labels, video_scores), the aggregated scores")
        strip_y, strip_s = check_inputs(*videos)
        unit = "video"
    else:
        strip_y, strip_s, unit = y, s, "sample"

    fig = Figure(figsize=(16.0, 9.5))
    axes = fig.subplots(2, 3).ravel()
    _draw_roc(axes[0], y, s, PANEL_TITLES[0])
    _draw_pr(axes[1], y, s, PANEL_TITLES[1])
    cm = np.asarray(confusion_matrix(y, predict_labels(s, threshold)), dtype=np.int64)
    # no colorbar: it would add a seventh axis, and the cells already print counts and shares
    _draw_confusion(axes[2], cm, f"{PANEL_TITLES[2]} at {threshold:.3f}")
    _draw_score_histograms(axes[3], y, s, threshold, PANEL_TITLES[3])
    ece = expected_calibration_error(y, s, ECE_BINS)
    _draw_reliability(axes[4], y, s, ECE_BINS, f"{PANEL_TITLES[4]} (ECE = {ece:.4f})")
    _draw_score_strip(axes[5], strip_y, strip_s, threshold, f"{PANEL_TITLES[5]} per {unit}",
                      unit, max_dots=max_strip_dots)
    n_fake = int(y.sum())
    heading = f"{title} - " if title else ""
    fig.suptitle(f"{heading}{y.size} samples ({y.size - n_fake} real / {n_fake} fake), "
                 f"threshold {threshold:.3f}", fontsize="x-large")
    fig.tight_layout()
    return fig


def plot_dashboard(
    labels: Any, scores: Any, threshold: float, path: str | Path,
    videos: tuple[Sequence[int], Sequence[float]] | None = None,
    title: str = "",
) -> Path:
    """Write the six-panel dashboard of :func:`build_dashboard` to ``path`` (PNG)."""
    return _save(build_dashboard(labels, scores, threshold, videos=videos, title=title), path)


__all__ = ["MAX_STRIP_DOTS", "PANEL_TITLES", "build_dashboard", "plot_dashboard"]
