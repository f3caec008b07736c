"""Evaluation and training plots written as PNG files.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), never pyplot: no
global figure registry to leak memory in long runs, no GUI backend, nothing to show or close.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from deepfake_detect.errors import DataError
from deepfake_detect.evaluation.metrics import (
    ECE_BINS,
    average_precision,
    brier_score,
    check_inputs,
    confusion_matrix,
    eer_point,
    expected_calibration_error,
    precision_recall_curve,
    predict_labels,
    reliability_curve,
    roc_auc,
    roc_curve,
)

log = logging.getLogger(__name__)

DPI = 110
_FIGSIZE = (5.0, 4.5)
_REAL_COLOR, _FAKE_COLOR = "tab:blue", "tab:red"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _both_classes(y: np.ndarray, what: str, path: str | Path) -> bool:
    if 0 < int(y.sum()) < y.size:
        return True
    log.warning("skipping %s plot %s: the data hold only one class", what, path)
    return False


def _note(ax: Axes, text: str, title: str) -> None:
    """An empty panel that says why it is empty (e.g. a curve that needs both classes)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey",
            wrap=True)
    ax.set(xticks=[], yticks=[], title=title)


def _draw_roc(ax: Axes, y: np.ndarray, s: np.ndarray, title: str) -> None:
    """ROC curve with AUC and the EER point; a note in the panel when one class is missing."""
    if not 0 < int(y.sum()) < y.size:
        _note(ax, "ROC needs real and fake samples\n(only one class here)", title)
        return
    fpr, tpr, _ = roc_curve(y, s)
    eer, idx, _ = eer_point(y, s)
    ax.plot(fpr, tpr, color=_FAKE_COLOR, lw=2, label=f"AUC = {roc_auc(y, s):.4f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.plot(fpr[idx], tpr[idx], "ko", label=f"EER = {eer:.4f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (real called fake)",
           ylabel="True positive rate (fake detected)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def _draw_pr(ax: Axes, y: np.ndarray, s: np.ndarray, title: str) -> None:
    """Precision-recall curve of the fake class with AP; a note when one class is missing."""
    if not 0 < int(y.sum()) < y.size:
        _note(ax, "Precision-recall needs real and fake\nsamples (only one class here)", title)
        return
    precision, recall, _ = precision_recall_curve(y, s)
    ax.step(recall, precision, where="post", color=_FAKE_COLOR, lw=2,
            label=f"AP = {average_precision(y, s):.4f}")
    ax.axhline(y.mean(), color="grey", lw=1, ls="--", label=f"fake share = {y.mean():.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall (fake)",
           ylabel="Precision (fake)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")


def _confusion_array(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (2, 2):
        raise DataError(f"confusion matrix must be 2x2 [[TN, FP], [FN, TP]], got shape {cm.shape}")
    return cm


def _draw_confusion(ax: Axes, cm: np.ndarray, title: str) -> AxesImage:
    """Counts and row percentages on a share-of-true-class colour scale; returns the image
    so the caller may add a colorbar (the dashboard leaves it out to keep one axis per panel)."""
    row_sums = cm.sum(axis=1, keepdims=True)
    # an empty row (class absent) shows 0 % rather than dividing by zero
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], labels=["real", "fake"])
    ax.set_yticks([0, 1], labels=["real", "fake"])
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    return image


def _draw_score_histograms(
    ax: Axes, y: np.ndarray, s: np.ndarray, threshold: float, title: str
) -> None:
    bins = np.linspace(0.0, 1.0, 41)
    for cls, name, color in ((0, "real", _REAL_COLOR), (1, "fake", _FAKE_COLOR)):
        part = s[y == cls]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{name} (n={part.size})")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold = {threshold:.3f}")
    ax.set(xlim=(0.0, 1.0), xlabel="P(fake)", ylabel="Samples", title=title)
    ax.legend(loc="best")


def _draw_reliability(
    ax: Axes, y: np.ndarray, s: np.ndarray, bins: int, title: str,
    ax_count: Axes | None = None,
) -> None:
    """Observed fake share per bin against the diagonal. With ``ax_count`` the samples per bin
    go into that axis; without it (the dashboard) they are written above the bars."""
    curve = reliability_curve(y, s, bins)
    edges, count = curve["edges"], curve["count"]
    centers = (edges[:-1] + edges[1:]) / 2.0
    width = edges[1] - edges[0]
    full = count > 0
    ax.bar(centers[full], curve["frequency"][full], width=width * 0.95, color=_FAKE_COLOR,
           alpha=0.7, edgecolor="black", lw=0.5, label="observed fake share")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.plot(curve["confidence"][full], curve["frequency"][full], "ko", ms=4,
            label="mean score in bin")
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel="Share of fakes (accuracy)", title=title)
    ax.grid(alpha=0.3)
    ece = expected_calibration_error(y, s, bins)
    ax.legend(loc="upper left", title=f"ECE = {ece:.4f}, Brier = {brier_score(y, s):.4f}",
              fontsize="small")
    if ax_count is None:
        ax.set_xlabel("P(fake) (confidence)")
        for x, f, n in zip(centers[full], curve["frequency"][full], count[full]):
            ax.text(x, min(f, 0.93) + 0.01, str(int(n)), ha="center", va="bottom", fontsize=6)
        return
    ax_count.bar(centers, count, width=width * 0.95, color="tab:grey", edgecolor="black", lw=0.5)
    for x, n in zip(centers[full], count[full]):
        ax_count.text(x, n, str(int(n)), ha="center", va="bottom", fontsize=6)
    ax_count.set(xlabel="P(fake) (confidence)", ylabel="Samples")
    ax_count.set_ylim(0, max(1, int(count.max())) * 1.25)
    ax_count.grid(alpha=0.3)


def plot_roc(labels: Any, scores: Any, path: str | Path, title: str = "ROC curve") -> Path | None:
    """ROC curve with AUC and the EER point; None (nothing written) with only one class."""
    y, s = check_inputs(labels, scores)
    if not _both_classes(y, "ROC", path):
        return None
    fig = Figure(figsize=_FIGSIZE)
    _draw_roc(fig.add_subplot(), y, s, title)
    return _save(fig, path)


def plot_pr(
    labels: Any, scores: Any, path: str | Path, title: str = "Precision-recall curve"
) -> Path | None:
    """Precision-recall curve for the fake class; None when only one class is present."""
    y, s = check_inputs(labels, scores)
    if not _both_classes(y, "precision-recall", path):
        return None
    fig = Figure(figsize=_FIGSIZE)
    _draw_pr(fig.add_subplot(), y, s, title)
    return _save(fig, path)


def plot_confusion(
    confusion: Sequence[Sequence[int]], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """2x2 matrix [[TN, FP], [FN, TP]] (rows true real/fake) with counts and row percentages."""
    cm = _confusion_array(confusion)
    fig = Figure(figsize=(4.5, 4.0))
    ax = fig.add_subplot()
    image = _draw_confusion(ax, cm, title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return _save(fig, path)


def plot_score_histograms(
    labels: Any, scores: Any, path: str | Path, threshold: float = 0.5,
    title: str = "Score distribution",
) -> Path:
    """Histograms of P(fake) for real and fake samples, with the decision threshold marked."""
    y, s = check_inputs(labels, scores)
    fig = Figure(figsize=(6.0, 4.0))
    _draw_score_histograms(fig.add_subplot(), y, s, threshold, title)
    return _save(fig, path)


def plot_reliability(
    labels: Any, scores: Any, path: str | Path, bins: int = ECE_BINS,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram of P(fake): observed fake share per score bin against the bin's mean
    score, the diagonal of perfect calibration, and the samples per bin underneath.

    Bars above the diagonal mean the detector under-states P(fake) there, below it over-states
    it. The legend gives ECE (same bins) and the Brier score.
    """
    y, s = check_inputs(labels, scores)
    fig = Figure(figsize=(5.0, 6.0))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    _draw_reliability(ax, y, s, bins, title, ax_count=ax_count)
    fig.tight_layout()
    return _save(fig, path)


def save_evaluation_plots(
    labels: Any, scores: Any, threshold: float, out_dir: str | Path, prefix: str = ""
) -> list[Path]:
    """Write {prefix}roc.png, pr.png, confusion.png, score_hist.png, reliability.png; returns the
    files written.

    ROC and precision-recall are skipped (with a logged warning) when only one class is present.
    """
    y, s = check_inputs(labels, scores)
    out_dir = Path(out_dir)
    label = prefix.rstrip("_- ") or None
    suffix = f" ({label})" if label else ""
    written = [
        plot_roc(y, s, out_dir / f"{prefix}roc.png", title=f"ROC curve{suffix}"),
        plot_pr(y, s, out_dir / f"{prefix}pr.png", title=f"Precision-recall curve{suffix}"),
        plot_confusion(
            confusion_matrix(y, predict_labels(s, threshold)), out_dir / f"{prefix}confusion.png",
            title=f"Confusion matrix at {threshold:.3f}{suffix}",
        ),
        plot_score_histograms(y, s, out_dir / f"{prefix}score_hist.png", threshold,
                              title=f"Score distribution{suffix}"),
        plot_reliability(y, s, out_dir / f"{prefix}reliability.png",
                         title=f"Reliability diagram{suffix}"),
    ]
    return [p for p in written if p is not None]


_NOT_METRICS = {"epoch", "step"}
_SPLIT = re.compile(r"^(train|val|test)[_/]")
_REDUCTION = re.compile(r"[_/](step|epoch)$")


def _read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(epoch, value), ...]} from a Lightning CSVLogger file, blank cells skipped."""
    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    series: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise DataError(f"{path}: expected a CSV logger metrics file with an 'epoch' column")
        for row in reader:
            epoch = number(row.get("epoch"))
            if not math.isfinite(epoch):
                continue
            for key, text in row.items():
                if key is None or key in _NOT_METRICS:
                    continue
                value = number(text)
                if math.isfinite(value):
                    series.setdefault(key, []).append((epoch, value))
    return series


def plot_learning_curves(metrics_csv_path: str | Path, out_path: str | Path) -> Path | None:
    """One panel per metric family (train/val/test variants share a panel) against epoch.

    Step-level values are averaged per epoch. Returns None when the file holds no metric values.
    """
    csv_path = Path(metrics_csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: metrics file not found (is the CSV logger enabled?)")
    series = _read_metrics_csv(csv_path)
    if not series:
        log.warning("no metric values in %s: learning-curve plot skipped", csv_path)
        return None

    families: dict[str, list[str]] = {}
    for name in sorted(series):
        family = _REDUCTION.sub("", _SPLIT.sub("", name))
        families.setdefault(family, []).append(name)

    n = len(families)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (family, names) in zip(axes, families.items()):
        for name in names:
            points = np.asarray(series[name])
            epochs = np.unique(points[:, 0])
            means = [points[points[:, 0] == e, 1].mean() for e in epochs]
            ax.plot(epochs, means, marker="o", ms=3, label=name)
        ax.set(title=family, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out_path)


_GROUP_BARS = (("auc", "AUC", "tab:blue"), ("ap", "AP", "tab:orange"), ("acc", "ACC", "tab:green"))


def plot_group_metrics(
    groups: dict[str, dict[str, Any]], path: str | Path, title: str = "Metrics per group"
) -> Path | None:
    """Grouped bars: groups along x, AUC / AP / ACC (at 0.5) at frame level (solid) and video
    level (hatched; left out when there is none), with the bootstrap interval as error bars.

    ``groups`` is :func:`deepfake_detect.evaluation.groups.group_metrics`' result: each group is
    its fakes against all reals. None (nothing written) for an empty ``groups``.
    """
    if not groups:
        return None
    names = list(groups)
    levels = [lv for lv in ("frame", "video") if any(groups[g].get(lv) for g in names)]
    bars = [(lv, key, label, color) for lv in levels for key, label, color in _GROUP_BARS]
    width = 0.8 / len(bars)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) * len(bars) / 3 + 3.0), 4.5))
    ax = fig.add_subplot()
    for i, (level, key, label, color) in enumerate(bars):
        values, low, high = _group_bar_values(groups, names, level, key)
        # the percentile interval need not hold the estimate: no negative error-bar length
        err = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values), width, color=color,
               hatch="//" if level == "video" else None, edgecolor="white" if level == "video"
               else color, yerr=np.nan_to_num(err), capsize=2, error_kw={"lw": 0.8},
               label=f"{label} {level}", alpha=0.9)
    ax.set_xticks(x, labels=[f"{g}\n{_fake_count(groups[g])}" for g in names],
                  rotation=20 if len(names) > 6 else 0)
    ax.set(ylim=(0.0, 1.05), ylabel="metric (each group's fakes vs all reals)", title=title)
    ax.grid(axis="y", alpha=0.3)
    # beside the axes: inside, it would hide the bars of the last groups
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              title="error bars:\n95% bootstrap\ninterval", title_fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def _fake_count(entry: dict[str, Any]) -> str:
    """``12 fake frames / 3 videos`` (or ``3 fake videos`` when the rows are videos)."""
    frame, video = entry.get("frame"), entry.get("video")
    if frame is None:
        return f"{entry['n_fake']} fake videos"
    return f"{entry['n_fake']} fake frames" + (f" / {video['n_fake']} videos" if video else "")


def _group_bar_values(
    groups: dict[str, dict[str, Any]], names: Sequence[str], level: str, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, low, high) of one metric at one level for every group, NaN where missing."""
    def num(x: Any) -> float:
        return math.nan if x is None else float(x)

    rows = []
    for name in names:
        m = groups[name].get(level) or {}
        bounds = (m.get("ci") or {}).get(key) or {}
        value = num(m.get(key))
        rows.append((value, num(bounds.get("low", value)), num(bounds.get("high", value))))
    values, low, high = (np.asarray(col, dtype=np.float64) for col in zip(*rows))
    return values, low, high


def plot_matrix_heatmap(
    values: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str,
    path: str | Path, higher_is_better: bool = True,
) -> Path:
    """A (checkpoint x dataset) table of one metric as a heatmap with the value in each cell
    (``n/a`` where a cell has none, e.g. frame AUC of a video detector); the colour scale runs
    over [0, 1], reversed for metrics where lower is better (EER)."""
    values = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(1.6 + 1.3 * len(columns), 1.2 + 0.55 * len(rows)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis" if higher_is_better
                      else "viridis_r", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            # dark text on the light end of the scale, light text on the dark end
            light = not math.isnan(v) and ((v > 0.6) == higher_is_better)
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", va="center",
                    color="black" if light else "white", fontsize="small")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=20 if len(columns) > 4 else 0)
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set(xlabel="dataset", ylabel="checkpoint", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)
