"""Evaluation of a detector on one or more datasets: frame and video metrics, CSV, plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake_detect.data.perturb import parse_perturbations
from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.outputs import atomic_write, inside, owned_folder, safe_name
from deepfake_detect.inference.aggregation import aggregate_videos
from deepfake_detect.evaluation.bootstrap import bootstrap_intervals
from deepfake_detect.evaluation.dashboard import plot_dashboard
from deepfake_detect.evaluation.error_analysis import error_analysis, error_counts
from deepfake_detect.evaluation.groups import group_metrics, write_groups_csv
from deepfake_detect.evaluation.metrics import binary_metrics, metrics_to_json
from deepfake_detect.evaluation.plots import plot_group_metrics, save_evaluation_plots
from deepfake_detect.evaluation.robustness import robustness_sweep
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import Predictor, as_predictor

if TYPE_CHECKING:
    from deepfake_detect.data.dataset_videos import Gathered
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("auto", "test", "val", "train", "all")
CI_LEVEL = 0.95
# where the caller did not say (e.g. a library call): the number it passed
GIVEN_THRESHOLD = "given by the caller"


def select_split(samples: Sequence[Sample], split: str, dataset: str) -> list[Sample]:
    """``auto``: the test split when the dataset has one, else every sample."""
    if split == "all":
        return list(samples)
    if split == "auto":
        test = [s for s in samples if s.split == "test"]
        return test or [s for s in samples if s.split in (None, "test")] or list(samples)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        found = sorted({s.split or "none" for s in samples})
        raise DataError(
            f"{dataset}: no samples in split {split!r} (splits found: {', '.join(found)}); "
            "use --split all to evaluate everything"
        )
    return chosen


def evaluate_samples(
    detector: Predictor | Detector,
    samples: Sequence[Sample],
    out_dir: Path,
    threshold: float,
    video_aggregation: str = "mean",
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    plots: bool = True,
    progress: bool = True,
    name: str = "",
    left_out: Sequence[tuple[str, str]] = (),
    error_examples: int = 16,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    *,
    options: ScoringOptions | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    threshold_origin: str = GIVEN_THRESHOLD,
    data_path: str = "",
) -> dict[str, Any]:
    """Score ``samples`` with a predictor (one model or an ensemble), write ``metrics.json``,
    ``predictions.csv`` and plots into ``out_dir``.

    ``options`` (:class:`ScoringOptions`) says how the samples are scored; without it, it is
    made from ``batch_size``, ``num_workers``, ``device``, ``progress``, ``tta`` and
    ``mc_dropout`` (the older form). The views and the number of dropout passes are recorded
    in metrics.json (``tta``, ``mc_dropout``); with dropout, or for an ensemble (the spread of
    its members), ``predictions.csv`` gets ``score_std``.

    ``left_out`` are (path, reason) of inputs that never became samples (e.g. videos without a
    face); they are counted with the files that could not be read. With ``plots`` the folder
    also gets ``dashboard.png`` and, unless ``error_examples`` is 0, ``errors.csv`` /
    ``errors.png`` with that many most confident false positives and false negatives.

    Uncertainty: each level gets ``ci``, 95 % percentile bootstrap intervals from ``bootstrap``
    resamples of whole videos (stratified by class, seeded with ``seed``; 0: none). When fakes
    carry a ``group`` (manipulation method), ``groups`` holds every metric per group (its
    fakes against all reals), also written to ``groups.csv`` (and ``groups.png`` with
    ``plots``). ``report`` states the levels, aggregation, counts, the threshold and
    ``threshold_origin``, ``data_path`` and the bootstrap settings, so every number can be
    reproduced."""
    if options is None:
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 tta=tta, mc_dropout=mc_dropout, progress=progress)
    predictor = as_predictor(detector)
    predictor.check(options)
    if predictor.input_kind == "clips" and any(hasattr(s, "read_image") for s in samples):
        raise DataError(f"{name or out_dir}: a sequence detector reads clips of frame files and "
                        "cannot score a shard dataset yet; evaluate the dataset folder instead")
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.input_kind == "clips":
        return _evaluate_videos(
            predictor, samples, out_dir, threshold, options, plots, name, left_out,
            error_examples=error_examples, bootstrap=bootstrap, seed=seed,
            threshold_origin=threshold_origin, data_path=data_path,
        )
    result = predictor.score_images(samples, options, f"evaluating {name}".strip())
    ok = result.ok
    kept = [s for s, good in zip(samples, ok) if good]
    if not kept:
        raise DataError(f"{name or out_dir}: none of the {len(samples)} files could be read")
    labels = np.array([s.label for s in kept])
    scores = result.scores[ok]
    videos = [s.video for s in kept]
    frame_ids = [s.frame or str(s.path) for s in kept]
    frame = binary_metrics(labels, scores, threshold=threshold)
    # frames of one video are not independent: the intervals resample whole videos
    frame["ci"] = bootstrap_intervals(labels, scores, threshold, clusters=videos, n=bootstrap,
                                      seed=seed, level=CI_LEVEL)
    vids, vlabels, vscores = aggregate_videos(
        videos, labels, scores, video_aggregation, frames=frame_ids,
    )
    video = binary_metrics(vlabels, vscores, threshold=threshold)
    video["ci"] = bootstrap_intervals(vlabels, vscores, threshold, clusters=vids, n=bootstrap,
                                      seed=seed, level=CI_LEVEL)
    groups = group_metrics(kept, labels, scores, threshold, videos=videos, frames=frame_ids,
                           video_aggregation=video_aggregation, n_boot=bootstrap, seed=seed)
    skipped = [{"path": p, "error": e} for p, e in left_out]
    skipped += [{"path": str(samples[i].path), "error": e} for i, e in sorted(result.errors.items())]
    metrics = {
        "dataset": name,
        "threshold": threshold,
        "video_aggregation": video_aggregation,
        "report": _report(
            ["frame", "video"], video_aggregation, frame, {**video, "n_videos": len(vids)},
            threshold, threshold_origin, data_path, bootstrap, seed, groups,
        ),
        "frame": frame,
        "video": {**video, "n_videos": len(vids)},
        **({"groups": groups} if groups else {}),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "errors": {**error_counts(labels, scores, threshold), "level": "frame"},
        **options.describe(),
    }
    variances = result.var[ok] if result.var is not None else None
    if variances is not None:
        metrics["uncertainty"] = _uncertainty_report(labels, scores, threshold, variances)
    # an ensemble's members, each with its own P(fake) on the same samples
    member_scores = result.members[:, ok] if result.members is not None else None
    names: list[str] = []
    if member_scores is not None:
        metrics["ensemble"] = _members_report(predictor.describe(), labels, member_scores)
        names = [f"score_{m['name']}" for m in metrics["ensemble"]["members"]]
    atomic_write(out_dir / "metrics.json", json.dumps(metrics_to_json(metrics), indent=2))
    _write_groups(out_dir, groups, plots, name)
    with open(out_dir / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        # score_std: the spread over MC-dropout passes, or over an ensemble's members, whose
        # own P(fake) follow as score_<member>
        writer = csv.writer(fh)
        stds = result.std[ok] if result.std is not None else None
        writer.writerow(["path", "video", "label", "score"]
                        + (["score_std"] if stds is not None else []) + names
                        + (["logit_var"] if variances is not None else []))
        for i, (s, sc) in enumerate(zip(kept, scores)):
            extra = [f"{stds[i]:.6f}"] if stds is not None else []
            if member_scores is not None:
                extra += [f"{v:.6f}" for v in member_scores[:, i]]
            if variances is not None:
                extra.append(f"{variances[i]:.6g}")
            writer.writerow([str(s.path), s.video, s.label, f"{sc:.6f}", *extra])
    with open(out_dir / "video_predictions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "label", "score"])
        for v, lab, sc in zip(vids, vlabels, vscores):
            writer.writerow([v, int(lab), f"{sc:.6f}"])
    if plots:
        save_evaluation_plots(labels, scores, threshold, out_dir)
        _save_analysis(
            out_dir, labels, scores, threshold, [str(s.path) for s in kept],
            [s.video for s in kept], error_examples, name, video_scores=(vlabels, vscores),
            readers=[getattr(s, "read_image", None) for s in kept],  # shard samples: chunks
        )
    return metrics


def _evaluate_videos(
    predictor: Predictor,
    samples: Sequence[Sample],
    out_dir: Path,
    threshold: float,
    options: ScoringOptions,
    plots: bool,
    name: str,
    left_out: Sequence[tuple[str, str]],
    error_examples: int = 16,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    threshold_origin: str = GIVEN_THRESHOLD,
    data_path: str = "",
) -> dict[str, Any]:
    """A sequence detector scores whole videos (mean over evenly spaced clips): video-level
    metrics only, and ``predictions.csv`` has one row per video (``score_std`` with
    Monte-Carlo dropout: the std over the passes of the video score). Intervals resample
    the videos; a video's group is that of the sample of its first frame."""
    result = predictor.score_clips(samples, options, f"evaluating {name}".strip())
    ok = result.ok
    kept = [v for v, good in zip(result.videos, ok) if good]
    if not kept:
        raise DataError(f"{name or out_dir}: none of the {len(result.videos)} videos could be scored")
    labels = np.array([v.label for v in kept])
    scores = result.scores[ok]
    video = binary_metrics(labels, scores, threshold=threshold)
    video_ids = [v.video for v in kept]
    video["ci"] = bootstrap_intervals(labels, scores, threshold, clusters=video_ids,
                                      n=bootstrap, seed=seed, level=CI_LEVEL)
    groups = group_metrics(_video_groups(samples, kept), labels, scores, threshold,
                           videos=video_ids, rows="video", n_boot=bootstrap, seed=seed)
    skipped = [{"path": p, "error": e} for p, e in left_out]
    skipped += [{"path": p, "error": e} for p, e in sorted(result.errors.items())]
    failed = [v.video for v, good in zip(result.videos, ok) if not good]
    metrics = {
        "dataset": name,
        "threshold": threshold,
        "video_aggregation": "mean over clips",
        "report": _report(
            ["video"], "mean over clips", None, {**video, "n_videos": len(kept)}, threshold,
            threshold_origin, data_path, bootstrap, seed, groups,
            frames=sum(len(v.frames) for v in kept), clips=int(result.clips.sum()),
        ),
        "frame": None,
        "video": {**video, "n_videos": len(kept)},
        **({"groups": groups} if groups else {}),
        "clips": int(result.clips.sum()),
        "sequence": predictor.preprocessing["sequence"],
        "short_videos_padded": result.short,
        "videos_not_scored": failed,
        "skipped": len(skipped),
        "skipped_files": skipped,
        "errors": {**error_counts(labels, scores, threshold), "level": "video"},
        **options.describe(),
    }
    atomic_write(out_dir / "metrics.json", json.dumps(metrics_to_json(metrics), indent=2))
    _write_groups(out_dir, groups, plots, name)
    with open(out_dir / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "label", "score", "clips", "frames"]
                        + (["score_std"] if result.std is not None else []))
        for i, (v, sc, n) in enumerate(zip(result.videos, result.scores, result.clips)):
            score = "" if np.isnan(sc) else f"{sc:.6f}"
            extra = []
            if result.std is not None:
                extra = ["" if np.isnan(result.std[i]) else f"{result.std[i]:.6f}"]
            writer.writerow([v.video, v.label, score, int(n), len(v.frames), *extra])
    if plots:
        save_evaluation_plots(labels, scores, threshold, out_dir)
        # no per-image paths: a video is shown by its first frame
        _save_analysis(
            out_dir, labels, scores, threshold,
            [str(v.frames[0]) if v.frames else "" for v in kept], [v.video for v in kept],
            error_examples, name,
        )
    return metrics


def _video_groups(samples: Sequence[Sample], videos: Sequence[Any]) -> list[str | None]:
    """The group of each scored video (a clip detector's :class:`VideoFrames`): that of the
    sample of its first frame, else of any sample with the same dataset and video id."""
    by_path = {str(s.path): s.group for s in samples}
    by_video: dict[tuple[str, str], str | None] = {}
    for s in samples:
        by_video.setdefault((s.dataset, s.video), s.group)
    out = []
    for v in videos:
        first = str(v.frames[0]) if v.frames else None
        out.append(by_path[first] if first in by_path else by_video.get((v.dataset, v.video)))
    return out


def _write_groups(out_dir: Path, groups: dict[str, Any], plots: bool, name: str) -> None:
    """``groups.csv`` (and ``groups.png`` with ``plots``) when the fakes carry groups."""
    if not groups:
        return
    write_groups_csv(out_dir / "groups.csv", metrics_to_json(groups))
    if plots:
        title = f"{name}: each group's fakes vs all reals" if name else None
        plot_group_metrics(groups, out_dir / "groups.png",
                           **({"title": title} if title else {}))


def _report(
    levels: list[str], aggregation: str, frame: dict[str, Any] | None, video: dict[str, Any],
    threshold: float, origin: str, data_path: str, bootstrap: int, seed: int,
    groups: dict[str, Any], frames: int | None = None, clips: int | None = None,
) -> dict[str, Any]:
    """What the numbers of one dataset are, so that anyone can reproduce them: the levels,
    how frames became videos, the counts, the threshold and where it came from, the data and
    the bootstrap."""
    counts: dict[str, int] = {}
    if frame is not None:
        counts.update(frames=frame["n"], frames_real=frame["n_real"], frames_fake=frame["n_fake"])
    elif frames is not None:
        counts["frames"] = frames
    if clips is not None:
        counts["clips"] = clips
    counts.update(videos=video["n_videos"], videos_real=video["n_real"],
                  videos_fake=video["n_fake"])
    ci = video.get("ci") or {}
    return {
        "levels": levels,
        "video_aggregation": aggregation,
        "counts": counts,
        "threshold": threshold,
        "threshold_origin": origin,
        "data_path": data_path,
        "bootstrap": {
            "resamples": bootstrap,
            "seed": seed,
            "level": CI_LEVEL if bootstrap else None,
            "interval": "percentile" if bootstrap else None,
            "resampled": ("videos, stratified by class (all frames of a drawn video together)"
                          if bootstrap else None),
            "n_videos": ci.get("n_clusters"),
        },
        "groups": list(groups),
        "group_task": "each group's fakes against all reals of the dataset" if groups else None,
    }


def _uncertainty_report(
    labels: np.ndarray, scores: np.ndarray, threshold: float, variances: np.ndarray
) -> dict[str, Any]:
    """How well the variance head's predicted variance flags the detector's own mistakes:
    its mean on right and wrong decisions and the AUC of variance as a mistake detector
    (0.5: no better than chance; NaN when there are no mistakes or no right decisions)."""
    from deepfake_detect.evaluation.metrics import predict_labels, roc_auc

    wrong = predict_labels(scores, threshold) != labels
    both = 0 < int(wrong.sum()) < wrong.size
    return {
        "mean_logit_var": float(np.mean(variances)),
        "mean_logit_var_correct": float(np.mean(variances[~wrong])) if (~wrong).any() else None,
        "mean_logit_var_wrong": float(np.mean(variances[wrong])) if wrong.any() else None,
        "error_detection_auc": roc_auc(wrong.astype(np.int64), variances) if both else float("nan"),
    }


def _members_report(report: dict, labels: np.ndarray, member_scores: np.ndarray) -> dict:
    """An ensemble's description (:meth:`Predictor.describe`) with each member's own frame
    metrics on the same samples (at the member's threshold), so that the gain of the ensemble
    over its members shows."""
    for entry, scores in zip(report["members"], member_scores):
        m = binary_metrics(labels, scores, threshold=entry["threshold"])
        entry["frame"] = {k: m[k] for k in ("auc", "eer", "ap", "acc", "acc_at_threshold")}
    return report


def _save_analysis(
    out_dir: Path, labels: np.ndarray, scores: np.ndarray, threshold: float,
    paths: Sequence[str], videos: Sequence[str], error_examples: int, name: str,
    video_scores: tuple[np.ndarray, np.ndarray] | None = None,
    readers: Sequence[Any] | None = None,
) -> None:
    """``dashboard.png`` and (``error_examples`` > 0) ``errors.csv`` / ``errors.png``;
    ``video_scores`` (labels, aggregated scores per video) feed the dashboard's score strip."""
    plot_dashboard(labels, scores, threshold, out_dir / "dashboard.png", videos=video_scores,
                   title=name)
    if error_examples > 0:
        error_analysis(paths, labels, scores, threshold, out_dir, n=error_examples, videos=videos,
                       readers=readers)


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _with_ci(level: dict[str, Any] | None, key: str) -> str:
    """``0.9312 [0.901, 0.960]``: the value and its bootstrap interval (when there is one)."""
    if level is None:
        return "n/a"
    bounds = (level.get("ci") or {}).get(key) or {}
    low, high = bounds.get("low"), bounds.get("high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return _fmt(level.get(key))
    return f"{_fmt(level.get(key))} [{low:.3f}, {high:.3f}]"


def _report_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the numbers come from: threshold and its origin, intervals, data."""
    report = metrics.get("report")
    if not report:
        return []
    rows = [("threshold", f"{report['threshold']:.4g} ({report['threshold_origin']})")]
    boot = report["bootstrap"]
    if boot["resamples"]:
        rows.append(("intervals", f"{boot['level']:.0%} bootstrap, {boot['resamples']} "
                                  f"resamples of videos, seed {boot['seed']}"))
    if report.get("data_path"):
        rows.append(("data", str(report["data_path"])))
    return rows


def group_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(group, its fakes, frame AUC [CI], video AUC [CI]) per group: each group's fakes
    against all reals; [] when the fakes carry no group."""
    rows = []
    for name, entry in (metrics.get("groups") or {}).items():
        frame, video = entry.get("frame"), entry.get("video")
        if frame is None:
            fakes = f"{entry['n_fake']} videos"
        else:
            fakes = f"{entry['n_fake']} frames" + (f" / {video['n_fake']} videos" if video else "")
        rows.append((name, fakes, _with_ci(frame, "auc"), _with_ci(video, "auc")))
    return rows


def summary_rows(metrics: dict[str, Any], groups: bool = True) -> list[tuple[str, str]]:
    """Human-readable key figures of one dataset's metrics, each with its bootstrap interval;
    with ``groups``, one row per group (frame | video AUC, fakes of the group)."""
    f, v = metrics["frame"], metrics["video"]
    if f is None:  # a sequence detector: videos only
        rows = [("videos (real/fake)", f"{v['n']} ({v['n_real']}/{v['n_fake']})"),
                ("clips", str(metrics.get("clips", "")))]
        for key in ("auc", "ap", "eer", "acc", "acc_at_threshold"):
            rows.append((key, f"{_with_ci(v, key)} video"))
        for key in ("precision", "recall", "f1"):
            rows.append((key, f"{_fmt(v.get(key))} video"))
    else:
        rows = [
            ("samples (real/fake)", f"{f['n']} ({f['n_real']}/{f['n_fake']})"),
            ("videos", f"{v['n_videos']} ({v['n_real']}/{v['n_fake']}), "
                       f"{metrics.get('video_aggregation', 'mean')} over frames"),
        ]
        for key in ("auc", "eer", "ap", "acc", "acc_at_threshold"):
            rows.append((key, f"{_with_ci(f, key)} frame | {_with_ci(v, key)} video"))
        rows.append(("macro_f1", f"{_fmt(f['macro_f1'])} frame | {_fmt(v['macro_f1'])} video"))
        for member in (metrics.get("ensemble") or {}).get("members", []):
            rows.append((f"  {member['name']} (w {member['weight']:.3g})",
                         f"auc {_fmt(member['frame']['auc'])} | acc "
                         f"{_fmt(member['frame']['acc'])} frame"))
    rows += _report_rows(metrics)
    if groups:
        for name, fakes, frame_auc, video_auc in group_rows(metrics):
            level = f"{frame_auc} frame | {video_auc} video" if f is not None else \
                f"{video_auc} video"
            rows.append((f"  group {name}", f"auc {level}; fakes: {fakes}"))
    rows.append(("skipped files", str(metrics["skipped"])))
    return rows


@dataclass
class EvaluateRequest:
    """Everything ``deepfake-detect evaluate`` is asked to do (see :func:`evaluate`).

    ``model``: what ``--checkpoint`` names (one checkpoint, several, or an ensemble file);
    ``data``: dataset folders or CSV manifests, one sub-folder of ``out_dir`` each (None: a new
    ``runs/evaluate-<time>``); ``threshold`` / ``video_aggregation`` None: the checkpoint's;
    ``options``: how samples are scored (without views given, the recipe's ``eval.tta``);
    ``bootstrap`` resamples (0: none) with ``seed`` behind every metric's 95 % interval;
    ``perturb``: robustness sweeps (``jpeg:90,70``, ...) run on each dataset after its clean
    evaluation; ``group_depth``: folder levels naming a sample's group (None: recognised);
    ``names``: the datasets' folder names (default: from their paths); ``faces_cache``: where
    face crops of videos are kept, one sub-folder per set of face settings (a benchmark shares
    it between checkpoints; None: the training run's cache or the output folder's).

    A dataset may be a shard dataset (``deepfake-detect shard``): a local folder or an
    object-store URI (``s3://bucket/shards``; only shard datasets are read from object
    storage). Its samples are those of its ``samples.csv`` files, their images read from its
    litdata items as they are scored, never extracted to files. ``shard_cache``: where litdata
    keeps its copy of a remote one's chunks (a benchmark shares it between checkpoints; None:
    ``<out_dir>/shard-cache``, removed when the evaluation ends).
    """

    model: ModelSource
    data: Sequence[str | Path]
    out_dir: Path | None = None
    split: str = "auto"
    threshold: float | None = None
    video_aggregation: str | None = None
    options: ScoringOptions = field(default_factory=ScoringOptions)
    plots: bool = True
    force: bool = False
    bootstrap: int = 1000
    seed: int = 0
    perturb: Sequence[str] = ()
    group_depth: int | None = None
    names: Sequence[str] | None = None
    faces_cache: Path | None = None
    shard_cache: Path | None = None

    def check(self) -> None:
        """Refuse bad options before any model is loaded or file read."""
        from deepfake_detect.inference.aggregation import AGGREGATORS

        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) \
                or self.bootstrap < 0:
            raise ConfigError(f"--bootstrap {self.bootstrap!r}: give a whole number >= 0 "
                              "(0: no confidence intervals)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed {self.seed!r}: give a whole number >= 0")
        if self.split not in SPLIT_CHOICES:
            raise DataError(f"--split {self.split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
        if self.names is not None and len(self.names) != len(self.data):
            raise ConfigError(f"{len(self.names)} dataset names for {len(self.data)} datasets")
        if self.group_depth is not None and not 0 <= self.group_depth <= 8:
            raise ConfigError(f"--group-depth {self.group_depth}: give 0 (no folder groups) to 8")
        parse_perturbations(self.perturb)  # a bad spec fails before any model is loaded
        if self.video_aggregation is not None and self.video_aggregation not in AGGREGATORS:
            raise ConfigError(f"--video-aggregation {self.video_aggregation!r}: choose one of "
                              f"{', '.join(sorted(AGGREGATORS))}")
        self.model.check()


@dataclass
class Evaluation:
    """What :func:`evaluate` wrote: the metrics per dataset and the folder."""

    results: dict[str, dict[str, Any]]
    out_dir: Path


def evaluate(request: EvaluateRequest) -> Evaluation:
    """``deepfake-detect evaluate``: every dataset of the request scored by the predictor the
    request names (one model or an ensemble; metrics.json then also holds each member's
    metrics on the same samples), one sub-folder of the output folder per dataset.

    The output folder must be new, empty or an earlier evaluate's folder, and hold none of the
    inputs (a non-empty folder this tool did not write only with ``force``); it is locked
    while the evaluation runs.
    """
    from deepfake_detect.data.locations import as_location
    from deepfake_detect.runinfo import create_run_dir, write_run_info

    request.check()
    out_dir = request.out_dir or create_run_dir("runs", "evaluate")
    # a URI stays a string (typed as a path on the command line, it arrives as s3:/b/x)
    data, split = [as_location(d, "--data") for d in request.data], request.split
    predictor = request.model.load()
    # --tta / --mc-dropout: a bad spec or a detector without dropout fails before any work.
    # Without --tta, the views the recipe evaluates with (eval.tta).
    options = request.options.with_default_tta(predictor.default_tta)
    predictor.check(options)
    threshold = predictor.threshold if request.threshold is None else request.threshold
    origin = threshold_origin(predictor, request.threshold)
    aggregation = request.video_aggregation or predictor.default_aggregation
    # object-store URIs are no local input that the output could overwrite
    inputs = [*request.model.inputs, *(d for d in data if isinstance(d, Path))]
    # claimed before anything is written: new, empty, or an earlier evaluate's; never an input
    with owned_folder(out_dir, "evaluate", inputs=inputs, force=request.force):
        shard_cache = request.shard_cache or inside(out_dir, "shard-cache")
        try:
            config, checkpoint = predictor.run_record()
            write_run_info(
                out_dir, config, checkpoint=checkpoint, data=[str(d) for d in data],
                split=split, threshold=threshold, video_aggregation=aggregation,
                tool_command="evaluate",
            )
            results: dict[str, dict[str, Any]] = {}
            meta = predictor.meta
            settings = predictor.prepare_settings()
            if request.faces_cache is not None:  # shared: one folder per set of face settings
                faces_cache = inside(request.faces_cache, settings_key(settings))
                cache_root = out_dir
            else:
                faces_cache, cache_root = _faces_cache(meta.experiment if meta else {}, out_dir)
            for k, path in enumerate(data):
                found = _dataset_samples(path, request, settings, faces_cache, cache_root,
                                         shard_cache, options.progress)
                samples = found.samples
                if request.names is not None:
                    name = safe_name(request.names[k], fallback="data")
                else:
                    stem = samples[0].dataset if samples else Path(str(path)).stem
                    name = safe_name(stem, fallback="data")
                if name in results:
                    name = f"{name}_{len(results)}"
                chosen = select_split(samples, split, name)
                left_out = found.left_out(chosen, split)  # unreadable inputs of the split(s)
                folder = inside(out_dir, name)
                results[name] = evaluate_samples(
                    predictor, chosen, folder, threshold=threshold,
                    video_aggregation=aggregation, plots=request.plots, name=name,
                    left_out=left_out, options=options, bootstrap=request.bootstrap,
                    seed=request.seed, threshold_origin=origin, data_path=str(path),
                )
                if request.perturb:  # after the clean evaluation, whose scores are severity 0
                    sweep = robustness_sweep(
                        predictor, chosen, parse_perturbations(request.perturb), folder,
                        threshold, aggregation, options, name=name,
                        bootstrap=request.bootstrap, seed=request.seed,
                    )
                    results[name]["robustness"] = {"rows": sweep["rows"],
                                                   "dir": str(sweep["dir"])}
            summary = {name: _summary(m) for name, m in results.items()}
            atomic_write(out_dir / "summary.json", json.dumps(metrics_to_json(summary), indent=2))
            return Evaluation(results, out_dir)
        finally:
            if request.shard_cache is None:  # ours, made in this output folder for this run
                drop_shard_cache(shard_cache)


def _dataset_samples(path: Path | str, request: EvaluateRequest, settings: Any,
                     faces_cache: Path | None, cache_root: Path, shard_cache: Path,
                     progress: bool) -> Gathered:
    """The samples of one ``--data`` entry: a dataset folder or CSV (videos cut into face crops
    the way the model was trained, cached) or a shard dataset (a local folder read in place, or
    a URI whose chunks litdata copies to ``shard_cache``), read from its chunks when scored."""
    from deepfake_detect.data.dataset_videos import gather_samples
    from deepfake_detect.data.sources import log_discovery

    gathered = gather_samples(
        [path], prepare=settings, faces_cache=faces_cache, cache_root=cache_root,
        progress=progress, group_depth=request.group_depth,
        shard_cache=shard_cache if isinstance(path, str) else None, what="--data",
    )
    log_discovery(gathered.found)
    return gathered


def drop_shard_cache(folder: Path) -> None:
    """Remove a shard cache this tool made (litdata's copy of remote chunks), first closing
    this process's readers of it (none made: nothing to do, and litdata is not loaded)."""
    if folder.exists():
        from deepfake_detect.data.shard_reader import forget_cache

        forget_cache(folder)
        shutil.rmtree(folder, ignore_errors=True)


_SUMMARY_CI = ("auc", "eer", "ap", "acc")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """One dataset's line of summary.json: the key figures per level with their intervals
    (``ci``: {metric: [low, high]}) and, when the fakes carry groups, auc, eer, ap, acc and
    the fakes counted per group and level (with their ``ci``)."""
    def level(m: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
        if m is None:
            return None
        out = {k: m[k] for k in keys}
        if m.get("ci"):
            out["ci"] = {k: [m["ci"][k]["low"], m["ci"][k]["high"]] for k in _SUMMARY_CI}
        return out

    summary: dict[str, Any] = {
        "frame": level(metrics["frame"], ("auc", "eer", "ap", "acc", "macro_f1", "n")),
        "video": level(metrics["video"], ("auc", "eer", "ap", "acc", "macro_f1", "n_videos")),
        "skipped": metrics["skipped"],
    }
    if metrics.get("groups"):
        summary["groups"] = {
            name: {lv: level(entry.get(lv), ("auc", "eer", "ap", "acc", "n_fake"))
                   for lv in ("frame", "video")}
            for name, entry in metrics["groups"].items()
        }
    return summary


def threshold_origin(predictor: Any, given: float | None) -> str:
    """Where the decision threshold of an evaluation came from, in words, for the report:
    ``--threshold``, a calibration, a choice on validation data during training, or the 0.5
    default. Only what the checkpoint (or ensemble file) records is claimed."""
    if given is not None:
        return "fixed (--threshold)"
    value = float(predictor.threshold)
    if hasattr(predictor, "members"):  # an ensemble: its file's threshold or the default
        calibration = getattr(predictor, "calibration", None)
        if calibration:
            return f"ensemble file ({_calibrated(calibration)})"
        return "ensemble default 0.5" if value == 0.5 else "ensemble file (stored value)"
    meta = predictor.meta
    if meta is None:
        return "default 0.5" if value == 0.5 else GIVEN_THRESHOLD
    if value != meta.threshold:
        return GIVEN_THRESHOLD
    if meta.calibration:
        return f"checkpoint ({_calibrated(meta.calibration)})"
    setting = meta.eval_settings.get("threshold") or {}
    strategy = setting.get("strategy", "fixed")
    # only a training run records validation metrics; other files (e.g. weights read with a
    # model config) never had their threshold chosen on data
    trained = "val_metrics" in (meta.model_extra or {})
    if trained and strategy != "fixed":
        target = f", target FPR {setting.get('value')}" if strategy == "fpr" else ""
        return f"checkpoint (chosen on validation: {strategy}{target})"
    if value == 0.5:
        return "checkpoint default 0.5"
    if trained and setting.get("value") == value:
        return "checkpoint (fixed in the recipe: eval.threshold.value)"
    return "checkpoint (stored value; its origin is not recorded)"


def _calibrated(calibration: dict[str, Any]) -> str:
    data = calibration.get("data") or []
    where = f"the {calibration.get('split', '?')} split of {', '.join(map(str, data)) or '?'}"
    strategy = calibration.get("threshold_strategy", "?")
    if strategy == "fpr" and calibration.get("target_fpr") is not None:
        strategy = f"fpr, target {calibration['target_fpr']}"
    return f"calibrated on {where}: {strategy}"


def evaluate_checkpoint(
    checkpoint: str | Path | Sequence[str | Path],
    data: Sequence[str | Path],
    out_dir: Path,
    split: str = "auto",
    threshold: float | None = None,
    video_aggregation: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    plots: bool = True,
    progress: bool = True,
    config: str | Path | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    ensemble: str | None = None,
    weights: str | Sequence[float] | None = None,
    force: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` with the request given option by option (the older form): the
    metrics per dataset. ``checkpoint`` (with ``config``, ``ensemble``, ``weights``) is the
    request's :class:`ModelSource`; the scoring knobs its :class:`ScoringOptions`."""
    request = EvaluateRequest(
        model=ModelSource(checkpoint, config, ensemble, weights), data=data, out_dir=out_dir,
        split=split, threshold=threshold, video_aggregation=video_aggregation, plots=plots,
        force=force, bootstrap=bootstrap, seed=seed,
        options=ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                               tta=tta, mc_dropout=mc_dropout, progress=progress),
    )
    return evaluate(request).results


__all__ = [
    "CLASS_NAMES", "SPLIT_CHOICES", "EvaluateRequest", "Evaluation", "evaluate",
    "evaluate_checkpoint", "evaluate_samples", "group_rows", "select_split", "summary_rows",
    "threshold_origin",
]


def settings_key(settings: Any) -> str:
    """8 hex digits naming a set of face settings: the folder of the crops cut with them in a
    shared faces cache (checkpoints trained with the same settings share their crops)."""
    import hashlib

    return hashlib.sha1(settings.model_dump_json().encode()).hexdigest()[:8]


def _faces_cache(experiment: dict[str, Any], out_dir: Path) -> tuple[Path | None, Path]:
    """``(faces_cache, cache_root)`` for videos in evaluated dataset folders: the training run's
    cache when it is there (same folder and face settings: its crops are reused), else a
    ``faces-cache`` folder in ``out_dir``."""
    data = experiment.get("data") or {}
    if data.get("faces_cache") and Path(data["faces_cache"]).is_dir():
        return Path(data["faces_cache"]), out_dir
    trained = experiment.get("output_dir")
    if trained and (Path(trained) / "faces-cache").is_dir():
        return None, Path(trained)
    return None, out_dir
