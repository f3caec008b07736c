"""Evaluation of a detector on one or more datasets: frame and video metrics, CSV, plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.outputs import atomic_write, inside, owned_folder, safe_name
from deepfake_detect.inference.aggregation import aggregate_videos
from deepfake_detect.evaluation.dashboard import plot_dashboard
from deepfake_detect.evaluation.error_analysis import error_analysis, error_counts
from deepfake_detect.evaluation.metrics import binary_metrics, metrics_to_json
from deepfake_detect.evaluation.plots import save_evaluation_plots
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import Predictor, as_predictor
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector

SPLIT_CHOICES = ("auto", "test", "val", "train", "all")


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
    ``errors.png`` with that many most confident false positives and false negatives."""
    if options is None:
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 tta=tta, mc_dropout=mc_dropout, progress=progress)
    predictor = as_predictor(detector)
    predictor.check(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.input_kind == "clips":
        return _evaluate_videos(
            predictor, samples, out_dir, threshold, options, plots, name, left_out,
            error_examples=error_examples,
        )
    result = predictor.score_images(samples, options, f"evaluating {name}".strip())
    ok = result.ok
    kept = [s for s, good in zip(samples, ok) if good]
    if not kept:
        raise DataError(f"{name or out_dir}: none of the {len(samples)} files could be read")
    labels = np.array([s.label for s in kept])
    scores = result.scores[ok]
    frame = binary_metrics(labels, scores, threshold=threshold)
    vids, vlabels, vscores = aggregate_videos(
        [s.video for s in kept], labels, scores, video_aggregation,
        frames=[s.frame or str(s.path) for s in kept],
    )
    video = binary_metrics(vlabels, vscores, threshold=threshold)
    skipped = [{"path": p, "error": e} for p, e in left_out]
    skipped += [{"path": str(samples[i].path), "error": e} for i, e in sorted(result.errors.items())]
    metrics = {
        "dataset": name,
        "threshold": threshold,
        "video_aggregation": video_aggregation,
        "frame": frame,
        "video": {**video, "n_videos": len(vids)},
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
) -> dict[str, Any]:
    """A sequence detector scores whole videos (mean over evenly spaced clips): video-level
    metrics only, and ``predictions.csv`` has one row per video (``score_std`` with
    Monte-Carlo dropout: the std over the passes of the video score)."""
    result = predictor.score_clips(samples, options, f"evaluating {name}".strip())
    ok = result.ok
    kept = [v for v, good in zip(result.videos, ok) if good]
    if not kept:
        raise DataError(f"{name or out_dir}: none of the {len(result.videos)} videos could be scored")
    labels = np.array([v.label for v in kept])
    scores = result.scores[ok]
    video = binary_metrics(labels, scores, threshold=threshold)
    skipped = [{"path": p, "error": e} for p, e in left_out]
    skipped += [{"path": p, "error": e} for p, e in sorted(result.errors.items())]
    failed = [v.video for v, good in zip(result.videos, ok) if not good]
    metrics = {
        "dataset": name,
        "threshold": threshold,
        "video_aggregation": "mean over clips",
        "frame": None,
        "video": {**video, "n_videos": len(kept)},
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
) -> None:
    """``dashboard.png`` and (``error_examples`` > 0) ``errors.csv`` / ``errors.png``;
    ``video_scores`` (labels, aggregated scores per video) feed the dashboard's score strip."""
    plot_dashboard(labels, scores, threshold, out_dir / "dashboard.png", videos=video_scores,
                   title=name)
    if error_examples > 0:
        error_analysis(paths, labels, scores, threshold, out_dir, n=error_examples, videos=videos)


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Human-readable key figures of one dataset's metrics."""

    def fmt(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    f, v = metrics["frame"], metrics["video"]
    if f is None:  # a sequence detector: videos only
        rows = [("videos (real/fake)", f"{v['n']} ({v['n_real']}/{v['n_fake']})"),
                ("clips", str(metrics.get("clips", "")))]
        for key in ("auc", "ap", "eer", "acc", "acc_at_threshold", "precision", "recall", "f1"):
            rows.append((key, f"{fmt(v.get(key))} video"))
        rows.append(("skipped files", str(metrics["skipped"])))
        return rows
    rows = [
        ("samples (real/fake)", f"{f['n']} ({f['n_real']}/{f['n_fake']})"),
        ("videos", str(v["n_videos"])),
    ]
    for key in ("auc", "eer", "ap", "acc", "acc_at_threshold", "macro_f1"):
        rows.append((key, f"{fmt(f[key])} frame | {fmt(v[key])} video"))
    for member in (metrics.get("ensemble") or {}).get("members", []):
        rows.append((f"  {member['name']} (w {member['weight']:.3g})",
                     f"auc {fmt(member['frame']['auc'])} | acc {fmt(member['frame']['acc'])} frame"))
    rows.append(("skipped files", str(metrics["skipped"])))
    return rows


@dataclass
class EvaluateRequest:
    """Everything ``deepfake-detect evaluate`` is asked to do (see :func:`evaluate`).

    ``model``: what ``--checkpoint`` names (one checkpoint, several, or an ensemble file);
    ``data``: dataset folders or CSV manifests, one sub-folder of ``out_dir`` each (None: a new
    ``runs/evaluate-<time>``); ``threshold`` / ``video_aggregation`` None: the checkpoint's;
    ``options``: how samples are scored (without views given, the recipe's ``eval.tta``).
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

    def check(self) -> None:
        """Refuse bad options before any model is loaded or file read."""
        from deepfake_detect.inference.aggregation import AGGREGATORS

        if self.split not in SPLIT_CHOICES:
            raise DataError(f"--split {self.split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
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
    from deepfake_detect.data.dataset_videos import gather_samples
    from deepfake_detect.data.sources import log_discovery
    from deepfake_detect.runinfo import create_run_dir, write_run_info

    request.check()
    out_dir = request.out_dir or create_run_dir("runs", "evaluate")
    data, split = list(request.data), request.split
    predictor = request.model.load()
    # --tta / --mc-dropout: a bad spec or a detector without dropout fails before any work.
    # Without --tta, the views the recipe evaluates with (eval.tta).
    options = request.options.with_default_tta(predictor.default_tta)
    predictor.check(options)
    threshold = predictor.threshold if request.threshold is None else request.threshold
    aggregation = request.video_aggregation or predictor.default_aggregation
    inputs = [*request.model.inputs, *data]
    # claimed before anything is written: new, empty, or an earlier evaluate's; never an input
    with owned_folder(out_dir, "evaluate", inputs=inputs, force=request.force):
        config, checkpoint = predictor.run_record()
        write_run_info(
            out_dir, config, checkpoint=checkpoint, data=[str(d) for d in data], split=split,
            threshold=threshold, video_aggregation=aggregation, tool_command="evaluate",
        )
        results: dict[str, dict[str, Any]] = {}
        meta = predictor.meta
        faces_cache, cache_root = _faces_cache(meta.experiment if meta else {}, out_dir)
        for path in data:
            # videos in dataset folders: face crops cut the way the model was trained, cached
            gathered = gather_samples(
                [path], prepare=predictor.prepare_settings(), faces_cache=faces_cache,
                cache_root=cache_root, progress=options.progress,
            )
            log_discovery(gathered.found)
            samples = gathered.samples
            name = safe_name(samples[0].dataset if samples else Path(path).stem, fallback="data")
            if name in results:
                name = f"{name}_{len(results)}"
            chosen = select_split(samples, split, name)
            # videos of the chosen split(s) that gave no face crop count as skipped inputs
            splits = {s.split for s in chosen}
            video_split = {str(v.path): v.split for v in gathered.found.videos}
            left_out = [
                (p, r) for p, r in gathered.skipped
                if p in video_split and (split == "all" or video_split[p] in splits)
            ]
            results[name] = evaluate_samples(
                predictor, chosen, inside(out_dir, name), threshold=threshold,
                video_aggregation=aggregation, plots=request.plots, name=name,
                left_out=left_out, options=options,
            )
        summary = {
            name: {"frame": m["frame"] and {k: m["frame"][k] for k in ("auc", "eer", "ap", "acc", "macro_f1", "n")},
                   "video": {k: m["video"][k] for k in ("auc", "eer", "ap", "acc", "macro_f1", "n_videos")},
                   "skipped": m["skipped"]}
            for name, m in results.items()
        }
        atomic_write(out_dir / "summary.json", json.dumps(metrics_to_json(summary), indent=2))
        return Evaluation(results, out_dir)


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
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` with the request given option by option (the older form): the
    metrics per dataset. ``checkpoint`` (with ``config``, ``ensemble``, ``weights``) is the
    request's :class:`ModelSource`; the scoring knobs its :class:`ScoringOptions`."""
    request = EvaluateRequest(
        model=ModelSource(checkpoint, config, ensemble, weights), data=data, out_dir=out_dir,
        split=split, threshold=threshold, video_aggregation=video_aggregation, plots=plots,
        force=force,
        options=ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                               tta=tta, mc_dropout=mc_dropout, progress=progress),
    )
    return evaluate(request).results


__all__ = [
    "CLASS_NAMES", "SPLIT_CHOICES", "EvaluateRequest", "Evaluation", "evaluate",
    "evaluate_checkpoint", "evaluate_samples", "select_split", "summary_rows",
]


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
