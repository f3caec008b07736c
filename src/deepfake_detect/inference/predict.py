"""Prediction on files and folders: one row per input, errors reported, never fatal.

Videos and photos go through the face pipeline (:mod:`deepfake_detect.inference.media_scoring`):
every face found is cut the way the checkpoint was trained and scored, and the file gets one
aggregated score; a photo or video without a face gets status ``no_face`` and no score. Images
declared to be face crops already (``crops=True``, ``--crops``) are scored as they are.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from deepfake_detect.data.media_inputs import MEDIA_EXTENSIONS
from deepfake_detect.data.sources import file_problem, is_image_file, walk_files
from deepfake_detect.data.video import is_video_file
from deepfake_detect.inference.decisions import predict_labels
from deepfake_detect.inference.scoring import check_loader_options, score_files
from deepfake_detect.inference.tta import TTASpec, check_mc_dropout, parse_tta
from deepfake_detect.models.detector import Detector
from deepfake_detect.outputs import atomic_open, atomic_write

if TYPE_CHECKING:
    from deepfake_detect.inference.ensemble import Ensemble


@dataclass
class Prediction:
    filename: str
    label: int | None  # 1 fake, 0 real, None when the file could not be scored
    score: float | None  # P(fake)
    error: str = ""
    frames: int = 0  # frames (1 for a photo) looked at
    faces: int = 0  # faces scored
    score_std: float | None = None  # with --mc-dropout: std of P(fake) over the passes
    logit_var: float | None = None  # with a variance head: predicted variance of the fake logit
    status: str = ""  # ok (scored), no_face (no face found: no score) or error; "" = from the rest

    def __post_init__(self) -> None:
        if not self.status:
            self.status = row_status(self.score, self.error)


STATUSES = ("ok", "no_face", "error")


def row_status(score: float | None, error: str) -> str:
    """``ok`` for a scored row, ``no_face`` when no face was found, else ``error``."""
    if score is not None:
        return "ok"
    return "no_face" if error.startswith("no_face") else "error"


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """The files to score, and error rows for the inputs that cannot be scored.

    Every input found gets one of the two: folders are expanded (recursively, images and
    videos by extension, sorted; symlinked folders followed, each real folder once, so that
    folder links that loop end; hidden files and folders skipped: the walk of datasets and
    ``prepare``, :func:`~deepfake_detect.data.sources.walk_folders`), and every file found,
    or given, goes through
    :func:`~deepfake_detect.data.sources.file_problem`: a broken symbolic link, a symbolic link
    loop or a missing path becomes an error row (no score) instead of being dropped.
    """
    files: list[Path] = []
    errors: list[Prediction] = []

    def add(path: Path) -> None:
        problem = file_problem(path)
        if problem is None:
            files.append(path)
        else:
            errors.append(Prediction(str(path), None, None, problem))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            unlisted: list[tuple[Path, str]] = []
            found = [p for p in walk_files(path, unlisted) if p.suffix.lower() in MEDIA_EXTENSIONS]
            errors.extend(Prediction(str(p), None, None, why) for p, why in unlisted)
            if not found and not unlisted:
                errors.append(
                    Prediction(str(path), None, None, "folder holds no image or video files")
                )
            for p in found:
                add(p)
        else:
            add(path)
    return files, errors


def predict_files(
    detector: Detector | Ensemble,
    inputs: Sequence[str | Path],
    threshold: float = 0.5,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    detect_faces: bool | None = None,
    aggregation: str = "mean",
    per_face: list | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    *,
    crops: bool = False,
    select: str | None = "all",
) -> list[Prediction]:
    """Score every input; ``per_face`` (a list) receives one row per scored face.

    Photos and videos go through the face pipeline with the checkpoint's face settings (crop
    geometry), scoring the faces ``select`` picks: ``all`` (default: a swapped face next to a
    real one is never skipped), ``largest``, ``relative``, or None for the checkpoint's own
    selection. The file score is ``aggregation`` over its faces (and frames). With ``crops``
    image files are face crops already and are scored as they are (videos are always cut
    into faces). ``detect_faces`` is the older spelling: True is the default, False is
    ``crops=True``.

    ``tta`` / ``mc_dropout`` (see :func:`score_files`) apply to face-crop images and, through
    :class:`MediaScorer`, to the face crops of videos and photos; with ``mc_dropout`` every
    scored row gets ``score_std`` (for media files: the std over the passes of the aggregated
    file score). A bad option, a bad spec or a detector without dropout raises
    :class:`ConfigError` before any file is read.
    """
    from deepfake_detect.errors import ConfigError
    from deepfake_detect.inference.aggregation import AGGREGATORS
    from deepfake_detect.inference.ensemble import Ensemble, check_scoring_options
    from deepfake_detect.inference.media_scoring import SELECTIONS

    # every option is checked before any file is read, even one only media files would use
    if aggregation not in AGGREGATORS:
        raise ConfigError(
            f"--aggregation {aggregation!r}: choose one of {', '.join(sorted(AGGREGATORS))}")
    if detect_faces is not None:
        if detect_faces and crops:
            raise ConfigError("--detect-faces and --crops contradict each other: choose one")
        crops = crops or not detect_faces
    if select is not None and select not in SELECTIONS:
        raise ConfigError(f"--select {select!r}: choose one of {', '.join(SELECTIONS)}")
    check_loader_options(batch_size, num_workers, device)
    tta = check_scoring_options(detector, tta, mc_dropout)
    ensemble = detector if isinstance(detector, Ensemble) else None
    files, rows = collect_inputs(inputs)
    as_crops = [p for p in files if crops and not is_video_file(p) and is_image_file(p)]
    crop_set = set(as_crops)
    media = [p for p in files if p not in crop_set]
    by_file: dict[Path, Prediction] = {}
    if as_crops:
        if ensemble is not None:
            result = ensemble.score_files(
                as_crops, batch_size=batch_size, num_workers=num_workers, device=device,
                progress=progress, description="predicting", tta=tta,
            )
        else:
            result = score_files(
                detector, as_crops, batch_size=batch_size, num_workers=num_workers, device=device,
                progress=progress, description="predicting", tta=tta, mc_dropout=mc_dropout,
            )
        labels = predict_labels(result.scores, threshold)
        for i, path in enumerate(as_crops):
            if i in result.errors:
                by_file[path] = Prediction(str(path), None, None, result.errors[i])
            else:
                std = None if result.std is None else float(result.std[i])
                var = None if result.var is None else float(result.var[i])
                by_file[path] = Prediction(str(path), int(labels[i]), float(result.scores[i]), "",
                                           1, 1, std, var)
    if media:
        from deepfake_detect.inference.media_scoring import MediaScorer, score_media

        scorer = MediaScorer(detector, aggregation=aggregation, batch_size=batch_size,
                             device=device, tta=tta, mc_dropout=mc_dropout, select=select)
        for res in score_media(scorer, media, progress=progress):
            label = None if res.score is None else int(predict_labels([res.score], threshold)[0])
            by_file[Path(res.filename)] = Prediction(
                res.filename, label, res.score, res.error, res.frames, res.faces, res.score_std
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
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
) -> list[Prediction]:
    """One row per video for a sequence detector: each ``video_dirs`` folder holds the face
    crops of one video; video files in ``inputs`` are cut into faces first, the way the
    checkpoint was trained. ``frames`` counts the frames, ``faces`` the scored clips.

    ``tta`` / ``mc_dropout``: see :func:`~deepfake_detect.inference.clip_scoring.score_videos`; with
    ``mc_dropout`` each scored row gets ``score_std``. A bad spec or a detector without
    dropout raises :class:`ConfigError` before any video is read."""
    import tempfile

    from deepfake_detect.data.prepare import prepare
    from deepfake_detect.data.video_clips import frames_folder_samples
    from deepfake_detect.errors import DeepfakeDetectError
    from deepfake_detect.inference.clip_scoring import score_videos
    from deepfake_detect.inference.media_scoring import prepare_settings

    check_loader_options(batch_size, num_workers, device)
    tta = parse_tta(tta)
    if mc_dropout:
        check_mc_dropout(detector, mc_dropout)
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
                                  num_workers=num_workers, device=device, progress=progress,
                                  tta=tta, mc_dropout=mc_dropout)
            score = float(result.scores[0])
            if np.isnan(score):
                error = next(iter(result.errors.values()), "no clip could be scored")
                rows.append(Prediction(filename, None, None, f"unreadable: {error}",
                                       len(samples), 0))
            else:
                label = int(predict_labels([score], threshold)[0])
                std = None if result.std is None else float(result.std[0])
                rows.append(Prediction(filename, label, score, "", len(samples),
                                       int(result.clips[0]), std))
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


# Optional columns, written only when some row has a value, so the default columns stay as
# they are: score_std (MC dropout, ensembles) and logit_var (a variance head). ``status`` comes
# last of all, after them, so that every earlier column keeps its place.
_OPTIONAL = ("score_std", "logit_var")
_LAST = "status"


def _optional_columns(rows: Sequence[Prediction]) -> list[str]:
    return [c for c in _OPTIONAL if any(getattr(r, c) is not None for r in rows)]


def _write_csv(rows: Sequence[Prediction], fh: TextIO) -> None:
    extra = _optional_columns(rows)
    writer = csv.writer(fh)
    writer.writerow([*_COLUMNS, *extra, _LAST])
    for r in rows:
        score = "" if r.score is None else f"{r.score:.6f}"
        label = "" if r.label is None else r.label
        row = [r.filename, label, score, r.frames, r.faces, r.error]
        for c in extra:
            value = getattr(r, c)
            row.append("" if value is None else f"{value:.6g}" if c == "logit_var" else f"{value:.6f}")
        writer.writerow([*row, r.status])


def _as_json(rows: Sequence[Prediction]) -> list[dict]:
    dropped = set(_OPTIONAL) - set(_optional_columns(rows))
    return [{k: v for k, v in asdict(r).items() if k not in dropped} for r in rows]


def write_predictions(
    rows: Sequence[Prediction], csv_out: Path | TextIO | None, json_path: Path | None = None
) -> None:
    """CSV ``filename,label,score,frames,faces,error`` (``,score_std`` / ``,logit_var`` when
    any row has one: Monte-Carlo dropout or an ensemble / a variance head), then ``,status``
    (ok, no_face or error), to a file or stream, optionally JSON (the same keys per row)."""
    if isinstance(csv_out, Path):
        with atomic_open(csv_out) as fh:
            _write_csv(rows, fh)
    elif csv_out is not None:
        _write_csv(rows, csv_out)
    if json_path is not None:
        atomic_write(json_path, json.dumps(_as_json(rows), indent=2))


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
        with atomic_open(out) as fh:
            write(fh)
    else:
        write(out)
    return [r for r in ordered if r.label is None]


def write_per_face(rows: Sequence[dict], path: Path) -> None:
    """One row per scored face: ``filename,frame,face,time,box,score`` (``,score_std`` with
    Monte-Carlo dropout or an ensemble)."""
    with_std = any(r.get("score_std") is not None for r in rows)
    with atomic_open(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "frame", "face", "time", "box", "score"]
                        + (["score_std"] if with_std else []))
        for r in rows:
            box = json.dumps(r["box"], separators=(",", ":"))
            std = r.get("score_std")
            extra = ([] if not with_std else ["" if std is None else f"{std:.6f}"])
            writer.writerow([r["filename"], r["frame"], r["face"], r["time"], box,
                             f"{r['score']:.6f}", *extra])
