"""Prediction on image files and folders: one row per input, errors reported, never fatal."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from deepfake_detect.data.sources import IMAGE_EXTENSIONS
from deepfake_detect.evaluation.metrics import predict_labels
from deepfake_detect.inference.scoring import score_files
from deepfake_detect.models.detector import Detector


@dataclass
class Prediction:
    filename: str
    label: int | None  # 1 fake, 0 real, None when the file could not be scored
    score: float | None  # P(fake)
    error: str = ""


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Expand folders (recursively, images only, sorted); missing paths become error rows."""
    files: list[Path] = []
    missing: list[Prediction] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                missing.append(Prediction(str(path), None, None, "folder holds no image files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(Prediction(str(path), None, None, "no such file or folder"))
    return files, missing


def predict_files(
    detector: Detector,
    inputs: Sequence[str | Path],
    threshold: float = 0.5,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[Prediction]:
    files, rows = collect_inputs(inputs)
    if files:
        result = score_files(
            detector, files, batch_size=batch_size, num_workers=num_workers, device=device,
            progress=progress, description="predicting",
        )
        labels = predict_labels(result.scores, threshold)
        for i, path in enumerate(files):
            if i in result.errors:
                rows.append(Prediction(str(path), None, None, result.errors[i]))
            else:
                rows.append(Prediction(str(path), int(labels[i]), float(result.scores[i])))
    return rows


def _write_csv(rows: Sequence[Prediction], fh: TextIO) -> None:
    writer = csv.writer(fh)
    writer.writerow(["filename", "label", "score", "error"])
    for r in rows:
        score = "" if r.score is None else f"{r.score:.6f}"
        writer.writerow([r.filename, "" if r.label is None else r.label, score, r.error])


def write_predictions(
    rows: Sequence[Prediction], csv_out: Path | TextIO | None, json_path: Path | None = None
) -> None:
    """CSV ``filename,label,score,error`` to a file or stream, and optionally JSON."""
    if isinstance(csv_out, Path):
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_out, "w", newline="", encoding="utf-8") as fh:
            _write_csv(rows, fh)
    elif csv_out is not None:
        _write_csv(rows, csv_out)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2), "utf-8")
