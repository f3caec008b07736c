"""``deepfake-detect benchmark``: every checkpoint on every dataset, as one matrix.

The tables of DeepfakeBench and the Effort paper, for the user's own checkpoints and data:
each (checkpoint, dataset) cell is one plain :func:`~deepfake_detect.evaluation.evaluate.evaluate`
(so a cell's numbers are exactly what ``evaluate`` gives), the cells share one face-crop cache
per dataset and face settings (videos are cut once, not once per checkpoint), and the results
are gathered into:

- ``matrix.csv``: one row per (checkpoint, dataset, metric) with its 95 % interval and counts;
- ``matrix.md``: one table per metric, checkpoints as rows and datasets as columns;
- ``matrix_<metric>.png``: a heatmap per metric;
- ``comparisons.csv`` / in ``matrix.md``: for every pair of checkpoints on every dataset, the
  paired difference of AUC over the same samples with its interval and DeLong's test, so that
  "0.93 vs 0.92" can be told apart from noise;
- with perturbations, one robustness curve per dataset and perturbation with a line per
  checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.metrics import metrics_to_json
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.outputs import atomic_write, inside, owned_folder, safe_name

# (key, level, metric, title): the matrix's metrics
MATRIX_METRICS = (
    ("frame_auc", "frame", "auc", "frame AUC"),
    ("video_auc", "video", "auc", "video AUC"),
    ("frame_eer", "frame", "eer", "frame EER"),
    ("frame_ap", "frame", "ap", "frame AP"),
    ("video_eer", "video", "eer", "video EER"),
    ("video_ap", "video", "ap", "video AP"),
)
# a checkpoint file named like this says nothing; its folder names it
_PLAIN_STEMS = {"model", "best", "last", "checkpoint", "pytorch_model", "weights"}


@dataclass
class Entry:
    """A named input of the benchmark: a checkpoint (or ensemble file) or a dataset (a
    dataset may be a shard dataset's object-store URI, kept a string)."""

    path: Path | str
    name: str = ""
    config: Path | None = None  # a checkpoint's model YAML (foreign checkpoints)


@dataclass
class BenchmarkRequest:
    """Everything ``deepfake-detect benchmark`` is asked to do (see :func:`benchmark`)."""

    checkpoints: Sequence[Entry]
    data: Sequence[Entry]
    out_dir: Path | None = None
    split: str = "auto"
    video_aggregation: str | None = None
    perturb: Sequence[str] = ()
    bootstrap: int = 1000
    seed: int = 0
    group_depth: int | None = None
    plots: bool = False  # each cell's ROC/PR/... plots (the matrix is always drawn)
    options: ScoringOptions = field(default_factory=ScoringOptions)
    force: bool = False

    def check(self) -> None:
        if not self.checkpoints:
            raise ConfigError("benchmark: give at least one --checkpoint (or list them in the YAML)")
        if not self.data:
            raise ConfigError("benchmark: give at least one --data (or list them in the YAML)")
        for entry in self.checkpoints:  # each cell's evaluate refuses bad options up front
            self.cell_request(entry, Path(".")).check()
        for kind, entries in (("checkpoint", self.checkpoints), ("dataset", self.data)):
            names = [e.name for e in entries]
            doubled = sorted({n for n in names if names.count(n) > 1})
            if doubled:
                raise ConfigError(f"benchmark: two {kind}s are named {doubled[0]!r}; give each "
                                  "its own name (name: in the YAML)")


    def cell_request(self, checkpoint: Entry, out_dir: Path) -> Any:
        """The ``evaluate`` request of one checkpoint's row: every dataset, in ``out_dir``."""
        from deepfake_detect.evaluation.evaluate import EvaluateRequest

        return EvaluateRequest(
            model=ModelSource(checkpoint.path, checkpoint.config),
            data=[d.path for d in self.data], out_dir=out_dir, split=self.split,
            video_aggregation=self.video_aggregation, options=self.options, plots=self.plots,
            bootstrap=self.bootstrap, seed=self.seed, perturb=list(self.perturb),
            group_depth=self.group_depth, names=[d.name for d in self.data],
        )


@dataclass
class Benchmark:
    """What :func:`benchmark` wrote: every cell's metrics, the pairwise comparisons, the folder."""

    cells: dict[tuple[str, str], dict[str, Any]]
    comparisons: list[dict[str, Any]]
    out_dir: Path


def name_entries(paths: Sequence[str | Path | dict | Entry], what: str) -> list[Entry]:
    """Entries from command-line paths or YAML items (a path, or ``{path, name, config}``),
    each with a unique, file-safe name: the given one, else the file or folder name (a
    checkpoint called ``model``/``best``/``last`` is named after its folder)."""
    entries: list[Entry] = []
    for item in paths:
        if isinstance(item, Entry):
            entry = item
        elif isinstance(item, dict):
            unknown = set(item) - {"path", "name", "config"}
            if unknown or "path" not in item:
                raise ConfigError(f"benchmark: a {what} entry takes path, name and config keys "
                                  f"(got {', '.join(sorted(item))})")
            entry = Entry(_entry_path(item["path"], what), str(item.get("name") or ""),
                          Path(item["config"]) if item.get("config") else None)
        else:
            entry = Entry(_entry_path(item, what))
        if not entry.name:
            # a URI (s3://bucket/shards) is named by its last part, as a folder is
            p = Path(entry.path.rstrip("/").rsplit("/", 1)[-1]) if isinstance(entry.path, str) \
                else entry.path
            stem = p.stem if p.suffix else p.name
            entry.name = p.parent.name if stem.lower() in _PLAIN_STEMS and p.parent.name else stem
        entry.name = safe_name(entry.name, fallback=what)
        entries.append(entry)
    taken: dict[str, int] = {}
    for entry in entries:  # the same file name twice (runs/a/model, runs/b/model): number them
        n = taken.get(entry.name, 0)
        taken[entry.name] = n + 1
        if n:
            entry.name = f"{entry.name}-{n + 1}"
    return entries


def _entry_path(value: str | Path, what: str) -> Path | str:
    """A dataset stays a URI string when it is one (Path would mangle s3://; the command line
    hands it over as s3:/...); everything else is a Path."""
    if what != "dataset":
        return Path(value)
    from deepfake_detect.config.schema import data_location

    try:
        return data_location(value)
    except ValueError as exc:
        raise ConfigError(f"benchmark: --data {exc}") from None


def benchmark(request: BenchmarkRequest) -> Benchmark:
    """Evaluate every checkpoint of ``request`` on every dataset, one checkpoint loaded at a
    time, and write the matrix (see the module's description). The output folder is claimed
    and locked as ``evaluate``'s is; each cell is an ``evaluate`` folder below it
    (``cells/<checkpoint>/``, one sub-folder per dataset). A shard dataset in object storage
    is fetched once into ``shard-cache/`` for all checkpoints, removed at the end."""
    from deepfake_detect.evaluation.evaluate import drop_shard_cache, evaluate
    from deepfake_detect.runinfo import create_run_dir, write_run_info

    request.check()
    out_dir = request.out_dir or create_run_dir("runs", "benchmark")
    inputs = [p for e in request.checkpoints for p in ModelSource(e.path, e.config).inputs]
    inputs += [e.path for e in request.data if isinstance(e.path, Path)]  # URIs: not local
    with owned_folder(out_dir, "benchmark", inputs=inputs, force=request.force):
        shard_cache = inside(out_dir, "shard-cache")
        try:
            write_run_info(
                out_dir, None, checkpoint=[str(e.path) for e in request.checkpoints],
                data=[str(e.path) for e in request.data], split=request.split,
                perturb=list(request.perturb), bootstrap=request.bootstrap, seed=request.seed,
                tool_command="benchmark",
            )
            cells: dict[tuple[str, str], dict[str, Any]] = {}
            folders: dict[tuple[str, str], Path] = {}
            for ckpt in request.checkpoints:
                cell_root = inside(out_dir, Path("cells") / ckpt.name)
                cell = request.cell_request(ckpt, cell_root)
                cell.faces_cache = inside(out_dir, "faces-cache")  # shared by the checkpoints
                cell.shard_cache = shard_cache  # so is litdata's copy of remote shard chunks
                evaluation = evaluate(cell)
                for data in request.data:
                    cells[(ckpt.name, data.name)] = evaluation.results[data.name]
                    folders[(ckpt.name, data.name)] = cell_root / data.name
            names = [c.name for c in request.checkpoints]
            datasets = [d.name for d in request.data]
            comparisons = _compare_pairs(names, datasets, folders, request.bootstrap,
                                         request.seed)
            _write_matrix(out_dir, names, datasets, cells, comparisons)
            if request.perturb:
                _robustness_curves(out_dir, names, datasets, folders)
            return Benchmark(cells, comparisons, out_dir)
        finally:  # ours, made in this output folder for this run
            drop_shard_cache(shard_cache)


# -- the matrix -------------------------------------------------------------------------------


def _value(metrics: dict[str, Any], level: str, metric: str) -> tuple[float, float, float]:
    """(value, low, high) of one metric at one level of a cell; NaN where it does not exist
    (a sequence detector has no frame level; intervals only with bootstrap)."""
    block = metrics.get(level) or {}
    value = block.get(metric)
    ci = (block.get("ci") or {}).get(metric) or {}
    as_float = lambda v: float("nan") if v is None else float(v)  # noqa: E731
    return as_float(value), as_float(ci.get("low")), as_float(ci.get("high"))


def cell_text(metrics: dict[str, Any], level: str, metric: str) -> str:
    """``0.9312 [0.901, 0.960]`` (or ``n/a``) for one metric of one cell."""
    return _fmt(*_value(metrics, level, metric))


def _fmt(value: float, low: float = float("nan"), high: float = float("nan")) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isnan(low):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"


def _write_matrix(
    out_dir: Path, names: list[str], datasets: list[str],
    cells: dict[tuple[str, str], dict[str, Any]], comparisons: list[dict[str, Any]],
) -> None:
    rows = []
    for (ckpt, data), metrics in cells.items():
        frame, video = metrics.get("frame") or {}, metrics.get("video") or {}
        for key, level, metric, _ in MATRIX_METRICS:
            value, low, high = _value(metrics, level, metric)
            rows.append({
                "checkpoint": ckpt, "dataset": data, "metric": key, "value": value,
                "low": low, "high": high, "n_frames": frame.get("n", ""),
                "n_videos": video.get("n_videos", video.get("n", "")),
                "threshold": metrics.get("threshold", ""),
                "video_aggregation": metrics.get("video_aggregation", ""),
            })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else
                             ("" if isinstance(v, float) else v)) for k, v in row.items()})
    atomic_write(out_dir / "matrix.csv", buffer.getvalue())
    atomic_write(out_dir / "matrix.md", _markdown(names, datasets, cells, comparisons))
    atomic_write(out_dir / "comparisons.csv", _comparisons_csv(comparisons))
    atomic_write(out_dir / "matrix.json", json.dumps(metrics_to_json({
        "checkpoints": names, "datasets": datasets,
        "cells": [{"checkpoint": c, "dataset": d, **{
            key: dict(zip(("value", "low", "high"), _value(m, level, metric)))
            for key, level, metric, _ in MATRIX_METRICS
        }} for (c, d), m in cells.items()],
        "comparisons": comparisons,
    }), indent=2))
    _heatmaps(out_dir, names, datasets, cells)


def _markdown(
    names: list[str], datasets: list[str], cells: dict[tuple[str, str], dict[str, Any]],
    comparisons: list[dict[str, Any]],
) -> str:
    lines = ["# Benchmark", ""]
    first = next(iter(cells.values()))
    report = first.get("report") or {}
    lines += [
        f"Values with their 95 % bootstrap interval ({_resampling(first)}); threshold: "
        f"{report.get('threshold_origin', 'the checkpoint threshold')}; video score: "
        f"{first.get('video_aggregation', 'mean')} of the frame scores.", "",
    ]
    for _, level, metric, title in MATRIX_METRICS:
        if all(math.isnan(_value(m, level, metric)[0]) for m in cells.values()):
            continue
        lines += [f"## {title}", "", "| checkpoint | " + " | ".join(datasets) + " |",
                  "| --- |" + " --- |" * len(datasets)]
        for ckpt in names:
            values = [_fmt(*_value(cells[(ckpt, d)], level, metric)) for d in datasets]
            lines.append(f"| {ckpt} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## Counts", "", "| checkpoint | " + " | ".join(datasets) + " |",
              "| --- |" + " --- |" * len(datasets)]
    for ckpt in names:
        counts = []
        for d in datasets:
            m = cells[(ckpt, d)]
            f, v = m.get("frame") or {}, m.get("video") or {}
            frames = f"{f['n']} frames ({f['n_real']} real / {f['n_fake']} fake), " if f else ""
            counts.append(f"{frames}{v.get('n_videos', v.get('n', '?'))} videos")
        lines.append(f"| {ckpt} | " + " | ".join(counts) + " |")
    lines.append("")
    if comparisons:
        lines += ["## Paired differences of AUC", "",
                  "Same samples, checkpoint A minus B; interval from the paired bootstrap, p from "
                  "it and from DeLong's test. An interval containing 0 means no difference shown.",
                  "", "| dataset | level | A | B | AUC A | AUC B | A - B [95 % interval] | "
                  "p (bootstrap) | p (DeLong) | n |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in comparisons:
            lines.append(
                f"| {c['dataset']} | {c['level']} | {c['a']} | {c['b']} | {c['auc_a']:.4f} | "
                f"{c['auc_b']:.4f} | {difference_text(c)} | "
                f"{_p(c.get('p_value'))} | {_p(c.get('delong_p'))} | {c['n']} |")
        lines.append("")
    return "\n".join(lines)


def difference_text(c: dict[str, Any]) -> str:
    """``+0.0123 [-0.0040, +0.0290]`` (no interval without bootstrap resamples)."""
    if c.get("low") is None or c.get("high") is None:
        return f"{c['diff']:+.4f}"
    return f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def _resampling(metrics: dict[str, Any]) -> str:
    ci = (metrics.get("frame") or metrics.get("video") or {}).get("ci")
    if not ci:
        return "no bootstrap"
    return f"{ci.get('n_resamples', '?')} resamples of {ci.get('resampled', 'videos')}"


def _p(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _heatmaps(out_dir: Path, names: list[str], datasets: list[str],
              cells: dict[tuple[str, str], dict[str, Any]]) -> None:
    from deepfake_detect.evaluation.plots import plot_matrix_heatmap

    for key, level, metric, title in MATRIX_METRICS:
        values = np.array([[_value(cells[(c, d)], level, metric)[0] for d in datasets]
                           for c in names], dtype=float)
        if np.isnan(values).all():
            continue
        plot_matrix_heatmap(values, names, datasets, title, out_dir / f"matrix_{key}.png",
                            higher_is_better=metric != "eer")


# -- paired comparisons -------------------------------------------------------------------


def _read_scores(path: Path, key: str) -> dict[str, tuple[int, float, str]]:
    """``{key column: (label, score, video)}`` of a predictions CSV (rows without a score left
    out)."""
    out: dict[str, tuple[int, float, str]] = {}
    if not path.is_file():
        return out
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("score", "") == "":
                continue
            out[row[key]] = (int(row["label"]), float(row["score"]), row.get("video", row[key]))
    return out


def _compare_pairs(
    names: list[str], datasets: list[str], folders: dict[tuple[str, str], Path],
    n_boot: int, seed: int,
) -> list[dict[str, Any]]:
    """Paired AUC differences for every pair of checkpoints on every dataset, over the
    samples both scored: frame level (resampling videos) and video level."""
    from deepfake_detect.evaluation.bootstrap import paired_auc_difference

    out: list[dict[str, Any]] = []
    for data in datasets:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for level, file, key in (("frame", "predictions.csv", "path"),
                                         ("video", "video_predictions.csv", "video")):
                    fa = folders[(a, data)] / file
                    fb = folders[(b, data)] / file
                    if level == "frame" and _is_clip_table(fa):
                        continue  # a sequence detector's predictions.csv is per video
                    sa, sb = _read_scores(fa, key), _read_scores(fb, key)
                    common = sorted(set(sa) & set(sb))
                    labels = np.array([sa[k][0] for k in common])
                    if len(common) < 2 or len(set(labels.tolist())) < 2:
                        continue
                    result = paired_auc_difference(
                        labels, np.array([sa[k][1] for k in common]),
                        np.array([sb[k][1] for k in common]),
                        clusters=[sa[k][2] for k in common] if level == "frame" else None,
                        n=n_boot, seed=seed,
                    )
                    out.append({"dataset": data, "level": level, "a": a, "b": b,
                                "n": len(common), **result})
    return out


def _is_clip_table(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return "path" not in header


def _comparisons_csv(comparisons: list[dict[str, Any]]) -> str:
    columns = ["dataset", "level", "a", "b", "n", "auc_a", "auc_b", "diff", "low", "high",
               "p_value", "delong_z", "delong_p", "n_resamples", "resampled"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for c in comparisons:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in c.items()})
    return buffer.getvalue()


# -- robustness -------------------------------------------------------------------------------


def _robustness_curves(out_dir: Path, names: list[str], datasets: list[str],
                       folders: dict[tuple[str, str], Path]) -> None:
    """One plot per dataset and perturbation: AUC against severity, a line per checkpoint."""
    from deepfake_detect.evaluation.robustness import plot_robustness_curves, read_robustness_rows

    target = inside(out_dir, "robustness")
    target.mkdir(parents=True, exist_ok=True)
    for data in datasets:
        curves = {c: read_robustness_rows(folders[(c, data)] / "robustness") for c in names}
        kinds = sorted({r["perturbation"] for rows in curves.values() for r in rows})
        for kind in kinds:
            per_ckpt = {c: [r for r in rows if r["perturbation"] == kind] for c, rows in curves.items()}
            plot_robustness_curves(per_ckpt, target / f"{safe_name(data)}_{safe_name(kind)}.png",
                                   title=f"{data}: {kind}")


__all__ = ["Benchmark", "BenchmarkRequest", "Entry", "MATRIX_METRICS", "benchmark", "cell_text",
           "difference_text", "name_entries"]
