"""Robustness sweeps: the data re-scored under perturbations of the face crops (JPEG
re-compression, blur, down-scaling, noise, contrast, brightness; see
:mod:`deepfake_detect.data.perturb`), every metric per perturbation and severity.

Each image is decoded once per run: the clean crop and all its perturbed views go through the
checkpoint's preprocessing and the one forward step side by side
(:meth:`~deepfake_detect.inference.predictor.LoadedModel.score_images` with ``views``). The
clean view is severity 0 of every perturbation and is scored exactly as a plain evaluation
scores it. Written into ``<out_dir>/robustness``:

* ``robustness.csv`` - one row per (perturbation, severity, level): perturbation, severity
  (0 = clean), level (frame / video), n, auc, eer, ap, acc, acc_at_threshold;
* ``robustness.json`` - the same rows, and every metric of ``binary_metrics`` per row;
* ``robustness_<kind>.png`` - AUC against severity, frame and video lines, from the clean
  point to the strongest severity.

:func:`plot_robustness_curves` draws several checkpoints' rows on one plot (one line each);
:func:`read_robustness_rows` reads a ``robustness.csv`` back for it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.data.perturb import (
    KINDS,
    Perturbation,
    format_severity,
    parse_perturbations,
    strength,
    sweep_views,
)
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.evaluation.bootstrap import bootstrap_intervals
from deepfake_detect.evaluation.metrics import binary_metrics, metrics_to_json
from deepfake_detect.inference.aggregation import aggregate_videos
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import Predictor, as_predictor
from deepfake_detect.outputs import atomic_target, atomic_write

COLUMNS = ("perturbation", "severity", "level", "n", "auc", "eer", "ap", "acc", "acc_at_threshold",
           # the 95 % bootstrap interval of each (videos resampled), empty without bootstrap
           "auc_low", "auc_high", "eer_low", "eer_high", "ap_low", "ap_high", "acc_low",
           "acc_high")
_INTERVALS = ("auc", "eer", "ap", "acc")
FOLDER = "robustness"


def robustness_sweep(
    predictor: Any,
    samples: Sequence[Sample],
    perturbations: Sequence[str | Perturbation] | str,
    out_dir: Path,
    threshold: float,
    video_aggregation: str = "mean",
    options: ScoringOptions | None = None,
    name: str = "",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``samples`` (labelled face crops) clean and under every severity of every
    perturbation (texts such as ``"jpeg:90,70,50,30"`` or parsed), in one pass that decodes
    each image once; write ``robustness.csv``, ``robustness.json`` and one
    ``robustness_<kind>.png`` per perturbation into ``out_dir / "robustness"``.

    ``predictor``: a Predictor (one model or an ensemble) or a detector module; ``threshold``
    / ``video_aggregation``: as for the plain evaluation (``acc_at_threshold``, frame scores
    to video scores); ``bootstrap`` resamples (0: none) with ``seed`` give every row its 95 %
    interval, as in the plain evaluation (frame level resampling videos). Files that cannot be read are left out of every row (as the plain
    evaluation leaves them out). Returns ``{"rows", "metrics", "perturbations", "skipped",
    "dir", "csv", "json", "plots"}``: the CSV rows (dicts, severity 0 = clean), the full
    metrics per kind and severity, the specs as text, the unreadable files and the paths.

    The clean rows are the plain evaluation's figures, except with Monte-Carlo dropout: a
    loader batch holds other files here (``batch_size`` // views), so the seeded dropout
    draws differ.
    """
    options = options or ScoringOptions()
    model: Predictor = as_predictor(predictor)
    if model.input_kind == "clips":
        label = getattr(model, "name", None) or "this detector"
        raise ConfigError(f"robustness sweeps score face images; {label} scores video clips "
                          "(evaluate it without --perturb)")
    perturbations = parse_perturbations(perturbations)
    if not perturbations:
        raise ConfigError(
            "robustness sweep: no perturbation given, e.g. --perturb jpeg:90,70,50,30")
    model.check(options)
    samples = list(samples)
    views = sweep_views(perturbations)
    result = model.score_images(samples, options, f"robustness {name}".strip(), views=views)
    ok = result.ok
    kept = [s for s, good in zip(samples, ok) if good]
    if not kept:
        raise DataError(f"{name or out_dir}: none of the {len(samples)} files could be read")
    labels = np.array([s.label for s in kept])
    videos = [s.video for s in kept]
    frames = [s.frame or str(s.path) for s in kept]

    def evaluate(scores: np.ndarray) -> dict[str, dict[str, Any]]:
        frame = binary_metrics(labels, scores, threshold=threshold)
        frame["ci"] = bootstrap_intervals(labels, scores, threshold, clusters=videos,
                                          n=bootstrap, seed=seed)
        _, vlabels, vscores = aggregate_videos(videos, labels, scores, video_aggregation,
                                               frames=frames)
        video = binary_metrics(vlabels, vscores, threshold=threshold)
        video["ci"] = bootstrap_intervals(vlabels, vscores, threshold, n=bootstrap, seed=seed)
        return {"frame": frame, "video": video}

    def interval(metrics: dict[str, Any]) -> dict[str, float]:
        ci = metrics.get("ci") or {}
        return {f"{k}_{end}": float((ci.get(k) or {}).get(end, float("nan")))
                for k in _INTERVALS for end in ("low", "high")}

    clean = evaluate(result.views[0][ok])
    metrics: dict[str, list[dict[str, Any]]] = {}
    view = 1  # the views follow the perturbations' severities in order (sweep_views)
    for p in perturbations:
        entries = [{"severity": 0, **clean}]
        for severity in p.severities:
            entries.append({"severity": severity, **evaluate(result.views[view][ok])})
            view += 1
        metrics[p.kind] = entries
    rows = [
        {"perturbation": kind, "severity": e["severity"], "level": level,
         **{k: e[level][k] for k in COLUMNS[3:9]}, **interval(e[level])}
        for kind, entries in metrics.items() for e in entries for level in ("frame", "video")
    ]
    skipped = [{"path": str(samples[i].path), "error": e} for i, e in sorted(result.errors.items())]

    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write(folder / "robustness.csv", rows_to_csv(rows))
    report = {
        "dataset": name,
        "threshold": threshold,
        "video_aggregation": video_aggregation,
        "perturbations": [p.text for p in perturbations],
        "n_samples": len(kept),
        "skipped": len(skipped),
        "skipped_files": skipped,
        **options.describe(),
        "rows": rows,
        "metrics": metrics,
    }
    json_path = atomic_write(folder / "robustness.json",
                             json.dumps(metrics_to_json(report), indent=2))
    plots = {kind: _sweep_plot(rows, kind, folder / f"robustness_{kind}.png", name)
             for kind in metrics}
    return {"rows": rows, "metrics": metrics, "perturbations": report["perturbations"],
            "skipped": skipped, "dir": folder, "csv": csv_path, "json": json_path,
            "plots": plots}


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``robustness.csv`` text: :data:`COLUMNS`, numbers to 6 decimals, NaN empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        cells = []
        for key in COLUMNS:
            value = row[key]
            if key == "severity":
                cells.append(format_severity(float(value)))
            elif isinstance(value, float):
                cells.append("" if not np.isfinite(value) else f"{value:.6f}")
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def read_robustness_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``robustness.csv`` (``path``: the file, or the ``robustness`` folder that
    holds it), numbers as numbers (an empty cell: NaN), as :func:`robustness_sweep` returns
    them up to the 6 decimals written."""
    path = Path(path)
    if path.is_dir():
        path = path / "robustness.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            found = list(csv.DictReader(fh))
    except OSError as e:
        raise DataError(f"{path}: cannot read the robustness rows ({e.strerror or e})") from None
    rows = []
    for raw in found:
        missing = [k for k in COLUMNS if k not in raw]
        if missing:
            raise DataError(f"{path}: not a robustness.csv (no column {missing[0]!r})")
        rows.append({"perturbation": raw["perturbation"], "severity": _number(raw["severity"]),
                     "level": raw["level"], "n": int(float(raw["n"] or 0)),
                     **{k: _number(raw[k]) for k in COLUMNS[4:]}})
    return rows


# -- plots ------------------------------------------------------------------------------------

RATES = ("auc", "ap", "eer", "acc", "acc_at_threshold")  # plotted on the whole [0, 1] range


def _number(value: Any) -> float:
    """A cell as a float (rows may come back from the CSV as text; empty: NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _draw(ax: Any, lines: Mapping[str, Sequence[Mapping[str, Any]]], kind: str, title: str,
          metric: str, legend: str) -> None:
    """One line per entry of ``lines`` (rows of one kind): ``metric`` against severity.

    The x axis runs from the clean image to the strongest severity whatever the kind's scale
    (JPEG quality and resize factor fall as they strengthen): the severities of all lines in
    order of strength, evenly spaced, labelled with their values, the clean point first."""
    severities = sorted({_number(r["severity"]) for rows in lines.values() for r in rows},
                        key=lambda s: (strength(kind, s), s))
    if 0.0 not in severities:
        severities.insert(0, 0.0)
    position = {s: i for i, s in enumerate(severities)}
    # marker and dash vary with colour, so that lines lying on one another still show
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--")]
    for i, (label, rows) in enumerate(lines.items()):
        points = sorted((position[_number(r["severity"])], _number(r[metric])) for r in rows)
        if points:
            xs, ys = zip(*points)
            marker, dash = styles[i % len(styles)]
            ax.plot(xs, ys, marker=marker, ls=dash, lw=2, label=str(label))
    ax.set_xticks(range(len(severities)),
                  ["clean" if s == 0 else format_severity(s) for s in severities])
    what = KINDS[kind].what if kind in KINDS else kind
    ax.set(xlabel=f"{what} (stronger to the right)", ylabel=metric.upper(), title=title)
    if metric in RATES:
        ax.set_ylim(-0.02, 1.02)
    if metric == "auc":
        ax.axhline(0.5, color="grey", lw=1, ls="--")  # chance
    ax.grid(alpha=0.3)
    if any(lines.values()):
        ax.legend(title=legend or None, loc="best", fontsize="small")


def _save(panels: list[tuple[str, dict[str, list]]], out_path: str | Path, title: str,
          metric: str, legend: str) -> Path:
    """One figure, a panel per ``(kind, lines)``, written atomically to ``out_path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (kind, lines) in zip(axes, panels):
        ax_title = title if len(panels) == 1 else (f"{title}: {kind}" if title else kind)
        _draw(ax, lines, kind, ax_title, metric, legend)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return out_path


def _kinds(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["perturbation"]) for r in rows))


def _sweep_plot(rows: Sequence[Mapping[str, Any]], kind: str, out_path: Path, name: str) -> Path:
    """``robustness_<kind>.png`` of one sweep: AUC against severity, frame and video lines."""
    lines = {level: [r for r in rows if r["perturbation"] == kind and r["level"] == level]
             for level in ("frame", "video")}
    title = f"{name}: AUC under {kind}" if name else f"AUC under {kind}"
    return _save([(kind, lines)], out_path, title, "auc", "level")


def plot_robustness_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    out_path: str | Path,
    *,
    title: str = "",
    level: str = "frame",
    metric: str = "auc",
) -> Path:
    """Several checkpoints' sweeps on one plot, one line per checkpoint: ``curves`` maps a
    checkpoint name to its rows (:func:`robustness_sweep`'s ``rows``, or
    :func:`read_robustness_rows` of its folder), drawn at ``level`` (frame or video),
    ``metric`` (default AUC) against severity from the clean point to the strongest.

    Rows of one perturbation give one plot; rows of several, one panel per perturbation side
    by side in the same figure (filter the rows for a PNG per perturbation). Returns
    ``out_path``."""
    if level not in ("frame", "video"):
        raise ConfigError(f"robustness curves: level {level!r}: choose frame or video")
    if metric not in COLUMNS[4:9]:
        raise ConfigError(f"robustness curves: metric {metric!r}: choose one of "
                          f"{', '.join(COLUMNS[4:9])}")
    kinds = _kinds([r for rows in curves.values() for r in rows])
    if not kinds:
        raise DataError(f"robustness curves for {out_path}: no rows to plot")
    panels = [(kind, {name: [r for r in rows if r["perturbation"] == kind and r["level"] == level]
                      for name, rows in curves.items()})
              for kind in kinds]
    return _save(panels, out_path, title, metric, legend="checkpoint")


__all__ = ["COLUMNS", "plot_robustness_curves", "read_robustness_rows", "robustness_sweep",
           "rows_to_csv"]
