"""Prediction on files and folders: one row per input, errors reported, never fatal.

Face-crop images are scored as they are. Videos, and photos when face detection is asked for,
go through the face pipeline (:mod:`deepfake_detect.inference.media`) and get one aggregated
score per file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from deepfake_detect.data.media import MEDIA_EXTENSIONS
from deepfake_detect.data.sources import is_image_file
from deepfake_detect.data.video import is_video_file
from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.metrics import predict_labels
from deepfake_detect.inference.scoring import score_files
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector


@dataclass
class Prediction:
    filename: str
    label: int | None  # 1 fake, 0 real, None when the file could not be scored
    score: float | None  # P(fake)
    error: str = ""
    frames: int = 0  # frames (1 for a photo) looked at
    faces: int = 0  # faces scored
    score_std: float | None = None  # with --mc-dropout: std of P(fake) over the passes


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Expand folders (recursively, images and videos, sorted); missing paths become error rows."""
    files: list[Path] = []
    missing: list[Prediction] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS
            )
            if not found:
                missing.append(Prediction(str(path), None, None, "folder holds no image or video files"))
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
    detect_faces: bool = False,
    aggregation: str = "mean",
    per_face: list | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
) -> list[Prediction]:
    """Score every input; ``per_face`` (a list) receives per-face rows of media files.

    ``tta`` / ``mc_dropout`` (see :func:`score_files`) apply to face-crop images only; videos
    and photos that need face detection are refused with them (:class:`ConfigError`).
    """
    files, rows = collect_inputs(inputs)
    crops = [p for p in files if not is_video_file(p) and not detect_faces and is_image_file(p)]
    crop_set = set(crops)
    media = [p for p in files if p not in crop_set]
    if media and (tta or mc_dropout):
        flag = "--tta" if tta else "--mc-dropout"
        raise ConfigError(
            f"{flag} applies to face-crop images only, not to videos or --detect-faces photos "
            f"(e.g. {media[0]}): cut the faces first with `deepfake-detect prepare` and predict "
            f"on the crops, or leave out {flag}"
        )
    by_file: dict[Path, Prediction] = {}
    if crops:
        result = score_files(
            detector, crops, batch_size=batch_size, num_workers=num_workers, device=device,
            progress=progress, description="predicting", tta=tta, mc_dropout=mc_dropout,
        )
        labels = predict_labels(result.scores, threshold)
        for i, path in enumerate(crops):
            if i in result.errors:
                by_file[path] = Prediction(str(path), None, None, result.errors[i])
            else:
                std = None if result.std is None else float(result.std[i])
                by_file[path] = Prediction(str(path), int(labels[i]), float(result.scores[i]), "",
                                           1, 1, std)
    if media:
        from deepfake_detect.inference.media import MediaScorer, score_media

        scorer = MediaScorer(detector, aggregation=aggregation, batch_size=batch_size, device=device)
        for res in score_media(scorer, media, progress=progress):
            label = None if res.score is None else int(predict_labels([res.score], threshold)[0])
            by_file[Path(res.filename)] = Prediction(
                res.filename, label, res.score, res.error, res.frames, res.faces
            )
            if per_face is not None:
                per_face.extend({"filename": res.filename, **asdict(f)} for f in res.per_face)
    rows.extend(by_file[p] for p in files)
    return rows


def predict_videos(
    detector: Detector,
    inputs: Sequence[str | Path],
    video_dirs: Sequence[str | Path] = (),
    threshold: float = 0.5,
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """One row per video for a sequence detector: each ``video_dirs`` folder holds the face
    crops of one video; video files in ``inputs`` are cut into faces first, the way the
    checkpoint was trained. ``frames`` counts the frames, ``faces`` the scored clips."""
    import tempfile

    from deepfake_detect.data.clips import frames_folder_samples
    from deepfake_detect.data.prepare import prepare
    from deepfake_detect.errors import DeepfakeDetectError
    from deepfake_detect.inference.clips import score_videos
    from deepfake_detect.inference.media import prepare_settings

    files, rows = collect_inputs(inputs)
    jobs: list[tuple[str, list]] = []  # (filename, frame samples)
    for folder in video_dirs:
        try:
            jobs.append((str(folder), frames_folder_samples(folder)))
        except DeepfakeDetectError as exc:
            rows.append(Prediction(str(folder), None, None, str(exc)))
    with tempfile.TemporaryDirectory(prefix="deepfake-detect-") as tmp:
        for i, path in enumerate(files):
            if not is_video_file(path):
                rows.append(Prediction(str(path), None, None, "a sequence detector scores videos: "
                                       "give video files or --video-dir folders of frames"))
                continue
            out = Path(tmp) / str(i)
            report = prepare([path], out, prepare_settings(detector), progress=False)
            samples = _crops_of(report.manifest) if report.faces else []
            if samples:
                jobs.append((str(path), samples))
            else:
                reason = "; ".join(f"{k}: {n}" for k, n in report.failures.items()) or "no face found"
                rows.append(Prediction(str(path), None, None, f"no_face: {reason}"))
        for filename, samples in jobs:
            result = score_videos(detector, samples, batch_size=batch_size,
                                  num_workers=num_workers, device=device, progress=progress)
            score = float(result.scores[0])
            if np.isnan(score):
                error = next(iter(result.errors.values()), "no clip could be scored")
                rows.append(Prediction(filename, None, None, f"unreadable: {error}",
                                       len(samples), 0))
            else:
                label = int(predict_labels([score], threshold)[0])
                rows.append(Prediction(filename, label, score, "", len(samples), int(result.clips[0])))
    return rows


def _crops_of(manifest: Path) -> list:
    """Face crops listed in a ``prepare`` manifest of one unlabelled video, as frame samples."""
    from deepfake_detect.data.samples import Sample

    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    return [
        Sample(manifest.parent / r["path"], -1, r["video"], frame=f"{r['video']}/{r['frame']}")
        for r in rows
    ]


_COLUMNS = ["filename", "label", "score", "frames", "faces", "error"]


def _has_std(rows: Sequence[Prediction]) -> bool:
    return any(r.score_std is not None for r in rows)


def _write_csv(rows: Sequence[Prediction], fh: TextIO) -> None:
    # score_std only with --mc-dropout, so that the default columns stay as they are
    with_std = _has_std(rows)
    writer = csv.writer(fh)
    writer.writerow(_COLUMNS + (["score_std"] if with_std else []))
    for r in rows:
        score = "" if r.score is None else f"{r.score:.6f}"
        label = "" if r.label is None else r.label
        row = [r.filename, label, score, r.frames, r.faces, r.error]
        if with_std:
            row.append("" if r.score_std is None else f"{r.score_std:.6f}")
        writer.writerow(row)


def _as_json(rows: Sequence[Prediction]) -> list[dict]:
    with_std = _has_std(rows)
    return [{k: v for k, v in asdict(r).items() if with_std or k != "score_std"} for r in rows]


def write_predictions(
    rows: Sequence[Prediction], csv_out: Path | TextIO | None, json_path: Path | None = None
) -> None:
    """CSV ``filename,label,score,frames,faces,error`` (``,score_std`` when any row has one,
    i.e. with Monte-Carlo dropout) to a file or stream, optionally JSON."""
    if isinstance(csv_out, Path):
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_out, "w", newline="", encoding="utf-8") as fh:
            _write_csv(rows, fh)
    elif csv_out is not None:
        _write_csv(rows, csv_out)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_as_json(rows), indent=2), "utf-8")


def write_submission(
    rows: Sequence[Prediction], out: Path | TextIO, fail_label: int = 1
) -> list[Prediction]:
    """Exactly ``filename,label``: the file's base name with extension, label 0 real / 1 fake,
    one row per input file, sorted by name. Files that could not be scored get ``fail_label``
    (a submission needs every row); they are returned so that the caller can report them.
    """
    ordered = sorted(rows, key=lambda r: (Path(r.filename).name, r.filename))

    def write(fh: TextIO) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["filename", "label"])
        for r in ordered:
            writer.writerow([Path(r.filename).name, fail_label if r.label is None else r.label])

    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as fh:
            write(fh)
    else:
        write(out)
    return [r for r in ordered if r.label is None]


def write_per_face(rows: Sequence[dict], path: Path) -> None:
    """One row per scored face: ``filename,frame,face,time,box,score``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "frame", "face", "time", "box", "score"])
        for r in rows:
            box = json.dumps(r["box"], separators=(",", ":"))
            writer.writerow([r["filename"], r["frame"], r["face"], r["time"], box, f"{r['score']:.6f}"])
