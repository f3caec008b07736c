"""Prediction on files and folders: one row per input, errors reported, never fatal.

Videos and photos go through the face pipeline (:mod:`deepfake_detect.inference.media_scoring`):
every face found is cut the way the checkpoint was trained and scored, and the file gets one
aggregated score; a photo or video without a face gets status ``no_face`` and no score. Images
declared to be face crops already (``crops=True``, ``--crops``) are scored as they are.

With ``--explain DIR`` every scored face also gets a heatmap overlay
(:mod:`deepfake_detect.inference.explain`), ``DIR/<file stem>/<frame:05d>_<face>.png``
(:class:`Heatmaps`); nothing of it is loaded otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

import numpy as np

from deepfake_detect.data.media_inputs import MEDIA_EXTENSIONS
from deepfake_detect.data.sources import file_problem, is_image_file, walk_files
from deepfake_detect.data.video import is_video_file
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.decisions import predict_labels
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import Predictor, as_predictor
from deepfake_detect.inference.scoring import score_files  # noqa: F401 - the older import path
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector
from deepfake_detect.outputs import atomic_open, atomic_write, inside, safe_name


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


FORMATS = ("csv", "submission")


def resolve_crops(crops: bool, detect_faces: bool | None) -> bool:
    """Whether image files are face crops already: ``--crops``, or the older
    ``--no-detect-faces`` (``--detect-faces`` is the default; with ``--crops`` it contradicts)."""
    if detect_faces is None:
        return bool(crops)
    if detect_faces and crops:
        raise ConfigError("--detect-faces and --crops contradict each other: choose one")
    return bool(crops) or not detect_faces


def _check_face_options(aggregation: str, select: str | None) -> None:
    from deepfake_detect.inference.aggregation import AGGREGATORS
    from deepfake_detect.inference.media_scoring import SELECTIONS

    if aggregation not in AGGREGATORS:
        raise ConfigError(
            f"--aggregation {aggregation!r}: choose one of {', '.join(sorted(AGGREGATORS))}")
    if select is not None and select not in SELECTIONS:
        raise ConfigError(f"--select {select!r}: choose one of {', '.join(SELECTIONS)}")


EXPLAIN_COMMAND = "predict-explain"  # the owner recorded in an --explain folder


class Heatmaps:
    """Writes the heatmap overlays of ``--explain``: ``folder/<file stem>/<frame:05d>_<face>.png``
    per scored face (a face crop file: ``00000_0.png``), every name made safe and kept inside
    ``folder``; two inputs of one stem (``a/x.mp4``, ``b/x.jpg``) get ``x`` and ``x~2``.

    Made once the model is loaded: a detector that cannot be explained (a video detector) is
    refused here, before any file is scored. ``written`` counts the PNGs written.
    """

    def __init__(self, predictor: Predictor, folder: Path, options: ScoringOptions) -> None:
        from deepfake_detect.inference.explain import explain_method

        explain_method(predictor)  # refuses what cannot be explained
        self.predictor = predictor
        self.folder = Path(folder)
        self.options = options
        self.written = 0
        self._subfolders: dict[str, str] = {}  # input -> its subfolder
        self._taken: set[str] = set()

    def _subfolder(self, filename: str) -> str:
        if filename not in self._subfolders:
            stem = safe_name(Path(filename).stem)
            name, k = stem, 1
            while name in self._taken:
                k += 1
                name = f"{stem}~{k}"
            self._taken.add(name)
            self._subfolders[filename] = name
        return self._subfolders[filename]

    def write(self, faces: Sequence[tuple[str, int, int, np.ndarray]]) -> list[str]:
        """The overlays of ``faces`` (``(filename, frame, face, crop)``), computed together;
        their paths relative to the folder (POSIX), in order."""
        from deepfake_detect.inference.explain import explain_crops, write_png

        if not faces:
            return []
        overlays = explain_crops(self.predictor, [f[3] for f in faces], self.options)
        names: list[str] = []
        for (filename, frame, face, _), image in zip(faces, overlays, strict=True):
            base = f"{self._subfolder(filename)}/{int(frame):05d}_{int(face)}"
            rel, k = f"{base}.png", 1
            while rel in names:  # one (frame, face) twice in a file: keep both
                k += 1
                rel = f"{base}~{k}.png"
            write_png(image, inside(self.folder, PurePosixPath(rel)))
            names.append(rel)
        self.written += len(names)
        return names


def predict_rows(
    predictor: Predictor | Detector,
    inputs: Sequence[str | Path],
    options: ScoringOptions,
    threshold: float | None = None,
    *,
    video_dirs: Sequence[str | Path] = (),
    crops: bool = False,
    select: str | None = "all",
    aggregation: str = "mean",
    per_face: list | None = None,
    heatmaps: Heatmaps | None = None,
) -> list[Prediction]:
    """One row per input, whatever ``predictor`` is (one model or an ensemble).

    The input kind is the predictor's (:attr:`Predictor.input_kind`): an image detector
    scores face crops (``crops``: image files are crops already) and the faces that the face
    pipeline finds in photos and videos (:func:`_predict_images`); a sequence detector scores
    videos and ``video_dirs`` folders of one video's frames (:func:`_predict_clips`).
    ``threshold`` None: the predictor's. Every option is checked before any file is read.
    ``heatmaps``: also write each scored face's heatmap overlay (:class:`Heatmaps`); the
    ``per_face`` rows then name it (``heatmap``, relative to its folder).
    """
    predictor = as_predictor(predictor)
    chosen = predictor.threshold if threshold is None else float(threshold)
    if predictor.input_kind == "clips":
        if heatmaps is not None:
            raise ConfigError(f"heatmaps explain image detectors; {predictor.name} scores "
                              "video clips")
        return _predict_clips(predictor, inputs, video_dirs, options, chosen)
    if video_dirs:
        raise ConfigError(
            "--video-dir needs a video detector (e.g. dual_stream); this checkpoint scores "
            "single images: pass the folder as an input instead"
        )
    return _predict_images(predictor, inputs, options, chosen, crops=crops, select=select,
                           aggregation=aggregation, per_face=per_face, heatmaps=heatmaps)


def _predict_images(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    options: ScoringOptions,
    threshold: float,
    *,
    crops: bool,
    select: str | None,
    aggregation: str,
    per_face: list | None,
    heatmaps: Heatmaps | None = None,
) -> list[Prediction]:
    """Face crops (with ``crops``) scored as they are; photos and videos through the face
    pipeline (:class:`~deepfake_detect.inference.media_scoring.MediaScorer`)."""
    # every option is checked before any file is read, even one only media files would use
    _check_face_options(aggregation, select)
    predictor.check(options)
    files, rows = collect_inputs(inputs)
    as_crops = [p for p in files if crops and not is_video_file(p) and is_image_file(p)]
    crop_set = set(as_crops)
    media = [p for p in files if p not in crop_set]
    by_file: dict[Path, Prediction] = {}
    if as_crops:
        result = predictor.score_images(as_crops, options, "predicting")
        labels = predict_labels(result.scores, threshold)
        for i, path in enumerate(as_crops):
            if i in result.errors:
                by_file[path] = Prediction(str(path), None, None, result.errors[i])
            else:
                std = None if result.std is None else float(result.std[i])
                var = None if result.var is None else float(result.var[i])
                by_file[path] = Prediction(str(path), int(labels[i]), float(result.scores[i]), "",
                                           1, 1, std, var)
        if heatmaps is not None:
            _explain_crop_files([p for i, p in enumerate(as_crops) if i not in result.errors],
                                heatmaps)
    if media:
        from deepfake_detect.inference.media_scoring import MediaScorer, score_media

        scorer = MediaScorer(predictor, aggregation=aggregation, select=select, options=options)
        names: list[list[str]] = []  # per file, its faces' overlays (with heatmaps)

        def explain(res) -> None:
            names.append(heatmaps.write([(res.filename, f.frame, f.face, c)
                                         for f, c in zip(res.per_face, res.crops, strict=True)]))

        results = score_media(scorer, media, with_crops=explain if heatmaps is not None else None)
        for k, res in enumerate(results):
            label = None if res.score is None else int(predict_labels([res.score], threshold)[0])
            by_file[Path(res.filename)] = Prediction(
                res.filename, label, res.score, res.error, res.frames, res.faces, res.score_std
            )
            if per_face is not None:
                overlays = names[k] if heatmaps is not None else [None] * len(res.per_face)
                for f, overlay in zip(res.per_face, overlays, strict=True):
                    row = {"filename": res.filename, **asdict(f)}
                    if overlay is not None:
                        row["heatmap"] = overlay
                    per_face.append(row)
    rows.extend(by_file[p] for p in files)
    return rows


def _explain_crop_files(paths: Sequence[Path], heatmaps: Heatmaps) -> None:
    """The overlays of face crop files, as many at a time as one explain batch holds; a file
    that cannot be read again is left out (its row says why already, or it changed since)."""
    from deepfake_detect.data.images import ImageLoadError, load_rgb
    from deepfake_detect.inference.explain import EXPLAIN_BATCH

    for start in range(0, len(paths), EXPLAIN_BATCH):
        faces = []
        for path in paths[start : start + EXPLAIN_BATCH]:
            with contextlib.suppress(ImageLoadError):
                faces.append((str(path), 0, 0, np.array(load_rgb(path))))
        heatmaps.write(faces)


def _predict_clips(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    video_dirs: Sequence[str | Path],
    options: ScoringOptions,
    threshold: float,
) -> list[Prediction]:
    """One row per video for a sequence detector: each ``video_dirs`` folder holds the face
    crops of one video; video files in ``inputs`` are cut into faces first, the way the
    checkpoint was trained. ``frames`` counts the frames, ``faces`` the scored clips."""
    import tempfile

    from deepfake_detect.data.prepare import prepare
    from deepfake_detect.data.video_clips import frames_folder_samples
    from deepfake_detect.errors import DeepfakeDetectError

    predictor.check(options)
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
            report = prepare([path], out, predictor.prepare_settings(), progress=False)
            samples = _crops_of(report.manifest) if report.faces else []
            if samples:
                jobs.append((str(path), samples))
            else:
                reason = "; ".join(f"{k}: {n}" for k, n in report.failures.items()) or "no face found"
                rows.append(Prediction(str(path), None, None, f"no_face: {reason}"))
        for filename, samples in jobs:
            result = predictor.score_clips(samples, options)
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


def predict_files(
    detector: Predictor | Detector,
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
    options: ScoringOptions | None = None,
) -> list[Prediction]:
    """Score every input with an image detector or an ensemble; ``per_face`` (a list)
    receives one row per scored face.

    Photos and videos go through the face pipeline with the checkpoint's face settings (crop
    geometry), scoring the faces ``select`` picks: ``all`` (default: a swapped face next to a
    real one is never skipped), ``largest``, ``relative``, or None for the checkpoint's own
    selection. The file score is ``aggregation`` over its faces (and frames). With ``crops``
    image files are face crops already and are scored as they are (videos are always cut
    into faces). ``detect_faces`` is the older spelling: True is the default, False is
    ``crops=True``.

    ``options`` (:class:`ScoringOptions`) says how inputs are scored; without it, it is made
    from ``batch_size``, ``num_workers``, ``device``, ``progress``, ``tta`` and ``mc_dropout``
    (the older form). With ``mc_dropout`` every scored row gets ``score_std`` (for media
    files: the std over the passes of the aggregated file score). A bad option, a bad spec or
    a detector without dropout raises :class:`ConfigError` before any file is read.
    """
    _check_face_options(aggregation, select)
    crops = resolve_crops(crops, detect_faces)
    if options is None:
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 tta=tta, mc_dropout=mc_dropout, progress=progress)
    return predict_rows(detector, inputs, options, threshold, crops=crops, select=select,
                        aggregation=aggregation, per_face=per_face)


def predict_videos(
    detector: Predictor | Detector,
    inputs: Sequence[str | Path],
    video_dirs: Sequence[str | Path] = (),
    threshold: float = 0.5,
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    *,
    options: ScoringOptions | None = None,
) -> list[Prediction]:
    """One row per video for a sequence detector (see :func:`_predict_clips`); the options as
    for :func:`predict_files`. A bad spec or a detector without dropout raises
    :class:`ConfigError` before any video is read."""
    if options is None:
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 tta=tta, mc_dropout=mc_dropout, progress=progress)
    return _predict_clips(as_predictor(detector), inputs, video_dirs, options, float(threshold))


# -- the predict command ----------------------------------------------------------------------


@dataclass
class PredictRequest:
    """Everything ``deepfake-detect predict`` is asked to do (see :func:`predict`).

    ``model``: what ``--checkpoint`` names; ``inputs``: files and folders; ``video_dirs``:
    folders of one video's frames (a sequence detector); ``threshold`` None: the checkpoint's.
    ``out`` / ``json_out`` / ``per_frame``: files to write (without ``out`` and ``json_out``
    the CSV goes to standard output); ``format``: ``csv`` or ``submission`` (exactly
    ``filename,label``, unscored files labelled ``fail_label``).
    """

    model: ModelSource
    inputs: Sequence[Path] = ()
    video_dirs: Sequence[Path] = ()
    options: ScoringOptions = field(default_factory=ScoringOptions)
    threshold: float | None = None
    crops: bool = False
    detect_faces: bool | None = None
    select: str | None = "all"
    aggregation: str = "mean"
    out: Path | None = None
    json_out: Path | None = None
    per_frame: Path | None = None
    format: str = "csv"
    fail_label: int = 1
    force: bool = False
    explain: Path | None = None

    def check(self) -> None:
        """Refuse bad options before any output is claimed, model loaded or file read."""
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r}: must be csv or submission")
        if not self.inputs and not self.video_dirs:
            raise ConfigError("give files or folders to score (or --video-dir)")
        if self.fail_label not in (0, 1):
            raise ConfigError(f"--fail-label {self.fail_label!r}: must be 0 or 1")
        _check_face_options(self.aggregation, self.select)
        resolve_crops(self.crops, self.detect_faces)
        self.model.check()

    @property
    def sources(self) -> list[Path]:
        """Every path read: no output may replace one of them."""
        return [*map(Path, self.inputs), *map(Path, self.video_dirs), *self.model.inputs]


@dataclass
class PredictReport:
    """What :func:`predict` did: every row, the per-face rows, and for a submission the rows
    labelled ``fail_label`` for want of a score."""

    rows: list[Prediction]
    per_face: list[dict]
    threshold: float
    unscored: list[Prediction] = field(default_factory=list)
    heatmaps: int = 0  # overlays written (--explain)

    @property
    def shared_names(self) -> bool:
        """Whether some inputs share a base name (ambiguous rows of a submission)."""
        names = [Path(r.filename).name for r in self.rows]
        return len(set(names)) < len(names)

    def counts(self) -> dict[str, int]:
        """Rows per status: ok, no_face, error."""
        return {s: sum(1 for r in self.rows if r.status == s) for s in STATUSES}


def predict(request: PredictRequest, stdout: TextIO | None = None) -> PredictReport:
    """``deepfake-detect predict``: check the request, claim the output files (never an
    input, never a file this tool did not write, unless ``force``), load the model, score
    every input (:func:`predict_rows`) and write the CSV (to ``stdout``, default standard
    output, when no file is named), JSON, submission and per-face files."""
    import sys

    from deepfake_detect.outputs import claim_file

    request.check()
    for option, target in (("--out", request.out), ("--json", request.json_out),
                           ("--per-frame", request.per_frame)):
        if target is not None:  # refused before any work: never an input, never a user's file
            claim_file(target, inputs=request.sources, force=request.force, what=option)
    with contextlib.ExitStack() as held:
        if request.explain is not None:
            held.enter_context(_claim_explain(request))
        predictor = request.model.load()
        heatmaps = (Heatmaps(predictor, request.explain, request.options)
                    if request.explain is not None else None)
        threshold = predictor.threshold if request.threshold is None else float(request.threshold)
        faces: list[dict] = []
        rows = predict_rows(
            predictor, request.inputs, request.options, threshold, video_dirs=request.video_dirs,
            crops=resolve_crops(request.crops, request.detect_faces), select=request.select,
            aggregation=request.aggregation, per_face=faces, heatmaps=heatmaps,
        )
    report = PredictReport(rows, faces, threshold,
                           heatmaps=heatmaps.written if heatmaps is not None else 0)
    stdout = sys.stdout if stdout is None else stdout
    if request.format == "submission":
        report.unscored = write_submission(rows, request.out or stdout, request.fail_label)
        if request.json_out is not None:
            write_predictions(rows, None, request.json_out)
    elif request.out is None and request.json_out is None:
        write_predictions(rows, stdout)
    else:
        write_predictions(rows, request.out, request.json_out)
    if request.per_frame is not None:
        write_per_face(faces, request.per_frame)
    return report


def _claim_explain(request: PredictRequest):
    """The ``--explain`` folder claimed (:func:`~deepfake_detect.outputs.claim_folder`), as a
    lock to hold for the run: never one holding an input, nor one inside an input folder, whose
    PNGs a later run over that folder would read as inputs."""
    from deepfake_detect.errors import OutputError
    from deepfake_detect.outputs import RunLock, claim_folder

    folder = Path(request.explain)
    for src in map(Path, request.sources):
        if src.is_dir() and folder.resolve().is_relative_to(src.resolve()):
            raise OutputError(f"--explain {folder} lies in the input folder {src}; its PNGs would "
                              "be read as inputs: choose a folder outside the inputs")
    claim_folder(folder, EXPLAIN_COMMAND, inputs=request.sources, force=request.force,
                 what="--explain")
    return RunLock(folder, EXPLAIN_COMMAND)


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
    Monte-Carlo dropout or an ensemble; ``,heatmap`` with ``--explain``: the face's overlay,
    relative to the ``--explain`` folder)."""
    with_std = any(r.get("score_std") is not None for r in rows)
    with_heatmap = any("heatmap" in r for r in rows)
    with atomic_open(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "frame", "face", "time", "box", "score"]
                        + (["score_std"] if with_std else [])
                        + (["heatmap"] if with_heatmap else []))
        for r in rows:
            box = json.dumps(r["box"], separators=(",", ":"))
            std = r.get("score_std")
            extra = ([] if not with_std else ["" if std is None else f"{std:.6f}"])
            if with_heatmap:
                extra.append(r.get("heatmap", ""))
            writer.writerow([r["filename"], r["frame"], r["face"], r["time"], box,
                             f"{r['score']:.6f}", *extra])
