"""The model card a reviewer reads beside a verdict: which detector, trained on what, at what
input size, decided at which threshold, calibrated how, by which version of this package.

Only file and folder *names* are shown, never server paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepfake_detect import __version__
from deepfake_detect.inference.predictor import LoadedModel, Predictor

REPORT = "report.json"  # what train writes into the run folder


def is_calibrated(predictor: Predictor) -> bool:
    """Whether P(fake) went through a fitted calibration (a temperature other than 1, or a
    calibration record) — for an ensemble, its own or any member's."""
    members = getattr(predictor, "members", None)
    if members is not None:
        own = predictor.temperature != 1.0 or bool(getattr(predictor, "calibration", None))
        return own or any(is_calibrated(m.model) for m in members)
    meta = predictor.meta
    return predictor.temperature != 1.0 or bool(meta is not None and meta.calibration)


def model_card(predictor: Predictor) -> dict[str, Any]:
    """The card of one model or an ensemble (with one card per member)."""
    members = getattr(predictor, "members", None)
    if members is not None:
        return {
            "kind": "ensemble",
            "detector": "ensemble of " + ", ".join(m.model.name for m in members),
            "method": predictor.method,
            "threshold": predictor.threshold,
            "calibration": {"temperature": predictor.temperature,
                            "calibrated": is_calibrated(predictor)},
            "input_size": sorted({m.model.input_size for m in members}),
            "members": [{**_single(m.model), "name": m.name, "weight": float(w)}
                        for m, w in zip(members, predictor.weights)],
            "version": __version__,
        }
    return {"kind": "model", **_single(predictor), "version": __version__}


def _single(model: LoadedModel) -> dict[str, Any]:
    meta = model.meta
    config = model.module.config.model_dump(mode="json")
    card: dict[str, Any] = {
        "detector": model.name,
        "backbone": config.get("timm_name") or config.get("backbone") or None,
        "checkpoint": Path(model.source).name if model.source else None,
        "input_size": model.input_size,
        "threshold": model.threshold,
        "calibration": _calibration(model),
        "trained_with": meta.version if meta is not None else None,
        "training": _training(model),
    }
    return {k: v for k, v in card.items() if v is not None}


def _calibration(model: LoadedModel) -> dict[str, Any]:
    """The temperature, and what calibrate recorded about fitting it (data name, split, size,
    threshold rule, ECE before and after)."""
    out: dict[str, Any] = {"temperature": model.temperature, "calibrated": is_calibrated(model)}
    record = model.meta.calibration if model.meta is not None else None
    if record:
        if record.get("data"):
            out["fitted_on"] = Path(str(record["data"])).name
        for key in ("split", "n", "threshold_strategy", "target_fpr", "ece_before", "ece_after"):
            if record.get(key) is not None:
                out[key] = record[key]
    return out


def _training(model: LoadedModel) -> dict[str, Any] | None:
    """What the model was trained on: the run's data folders and recipe (checkpoint meta) and,
    when the run folder is next to the checkpoint, its class counts and best score."""
    meta = model.meta
    experiment = meta.experiment if meta is not None else {}
    data = experiment.get("data") or {}
    out: dict[str, Any] = {}
    paths = data.get("path") or []
    if paths:
        paths = paths if isinstance(paths, list) else [paths]
        out["datasets"] = [Path(str(p)).name for p in paths]
    if data.get("holdout_groups"):
        out["held_out_groups"] = list(data["holdout_groups"])
    if experiment.get("name"):
        out["run"] = experiment["name"]
    train = experiment.get("train") or {}
    if train.get("epochs"):
        out["epochs"] = train["epochs"]
    report = _run_report(model.source)
    if report:
        for key in ("class_counts", "monitor", "best_score"):
            if report.get(key) is not None:
                out[key] = report[key]
    return out or None


def _run_report(source: str | None) -> dict[str, Any] | None:
    """The run folder's report.json (the checkpoint sits in the run folder or its
    ``checkpoints/``), or None."""
    if not source:
        return None
    folder = Path(source).parent
    if folder.name == "checkpoints":
        folder = folder.parent
    candidate = folder / REPORT
    if candidate.is_file():
        try:
            report = json.loads(candidate.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return report if isinstance(report, dict) else None
    return None
