"""Prediction on raw videos and photos: sample frames, find and crop faces, score, aggregate.

Faces are found and cut by the one face pipeline (:class:`~deepfake_detect.data.faces.pipeline.
FacePipeline`, which ``prepare`` uses too) with the checkpoint's own settings (the ``prepare``
section stored with it), so a model sees at prediction time the same kind of crop it was trained
on; which faces are scored (``select``) may be chosen apart from that. A file in which no face
is found gets a status saying so and no score.

Test-time augmentation and Monte-Carlo dropout (:mod:`deepfake_detect.inference.tta`) work on
the face crops exactly as for face-crop images (the same forward step,
:func:`~deepfake_detect.inference.predictor.score_batch`): each face's score is the mean over
the views and/or the dropout passes. With Monte-Carlo dropout the file score's spread is
the standard deviation over the passes of the file's aggregated score (see
:meth:`MediaScorer.score`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import FaceDetector
from deepfake_detect.data.faces.cascade import build_face_finder
from deepfake_detect.data.faces.pipeline import FacePipeline
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.aggregation import AGGREGATORS
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import (
    CropScores,
    Predictor,
    as_predictor,
    prepare_settings,
)
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector


@dataclass
class FaceScore:
    frame: int
    face: int
    time: float
    box: list[float]
    score: float  # P(fake); with TTA / MC dropout the mean over views and passes
    score_std: float | None = None  # with MC dropout: std of P(fake) over the passes


@dataclass
class MediaResult:
    filename: str
    score: float | None
    frames: int  # frames (or photos) looked at
    faces: int  # faces scored
    error: str = ""
    notes: list[str] = field(default_factory=list)
    per_face: list[FaceScore] = field(default_factory=list)
    # with MC dropout: std over the passes of the file's aggregated score (MediaScorer.score)
    score_std: float | None = None
    # with MediaScorer.score(keep_crops=True): the face crops (RGB uint8), in the order of
    # per_face; never written out (the outputs list their fields by name)
    crops: list[np.ndarray] = field(default_factory=list, repr=False)


SELECTIONS = ("all", "largest", "relative")


def with_selection(settings: PrepareConfig, select: str | None) -> PrepareConfig:
    """``settings`` with ``crop.select`` replaced by ``select`` (None: unchanged)."""
    if select is None or select == settings.crop.select:
        return settings
    if select not in SELECTIONS:
        raise ConfigError(f"--select {select!r}: choose one of {', '.join(SELECTIONS)}")
    return settings.model_copy(update={"crop": settings.crop.model_copy(update={"select": select})})


class MediaScorer:
    """Holds the predictor, the face pipeline and the options; scores one file at a time.

    ``predictor``: a :class:`~deepfake_detect.inference.predictor.Predictor` (one model or an
    ensemble, whose members all score the same crops) or a detector module. ``options``: how
    the crops are scored (:class:`ScoringOptions`); without it, made from ``batch_size``,
    ``device``, ``tta``, ``mc_dropout`` and ``seed`` (the older form). With Monte-Carlo
    dropout each chunk of a file's crops is seeded with the seed + the index of its first
    crop, so a file gets the same scores every time for the same batch size. A bad spec or a
    detector without dropout raises :class:`ConfigError` here, before any file is read or the
    face detector is loaded.

    Faces are found and cut by the :class:`~deepfake_detect.data.faces.pipeline.FacePipeline`
    with ``settings`` (default: the checkpoint's, :func:`prepare_settings`); ``select``
    (largest, all, relative) replaces their ``crop.select`` (``predict`` scores every face).
    """

    def __init__(
        self,
        predictor: Predictor | Detector,
        settings: PrepareConfig | None = None,
        aggregation: str = "mean",
        batch_size: int = 64,
        device: str | None = None,
        face_detector: FaceDetector | None = None,
        tta: TTASpec | str | None = None,
        mc_dropout: int = 0,
        seed: int = 0,
        select: str | None = None,
        *,
        options: ScoringOptions | None = None,
    ):
        if aggregation not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregation {aggregation!r}; choose one of {', '.join(sorted(AGGREGATORS))}"
            )
        if options is None:
            options = ScoringOptions(batch_size=batch_size, num_workers=0, device=device, tta=tta,
                                     mc_dropout=mc_dropout, seed=seed)
        self.predictor = as_predictor(predictor)
        self.predictor.check(options)
        self.options = options
        self.settings = with_selection(settings or self.predictor.prepare_settings(), select)
        self.device = options.device
        self.predictor.place(self.device)
        if self.settings.detect.device == "auto" and self.device.type == "cpu":
            # a user who asked for the CPU gets the face detector there too
            self.settings = self.settings.model_copy(
                update={"detect": self.settings.detect.model_copy(update={"device": "cpu"})}
            )
        self.faces = face_detector or build_face_finder(self.settings.detect, self.settings.crop)
        self.pipeline = FacePipeline(self.settings, self.faces)
        self.aggregation = aggregation

    @property
    def transform(self):
        """The transform of one crop (an ensemble: its first member's)."""
        return self.predictor.transform

    def _classify(self, crops: list[np.ndarray]) -> CropScores:
        """The scores of one file's face crops (:meth:`Predictor.score_crops`)."""
        return self.predictor.score_crops(crops, self.options)

    def score(
        self,
        path: str | Path,
        *,
        keep_crops: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> MediaResult:
        """Find, crop and score the faces of one file and aggregate them into its score.

        With Monte-Carlo dropout each face's score is its mean over the passes, and the file's
        score is the aggregation of those means, so that it is reproducible from the per-face
        rows like a plain score. ``score_std`` is the standard deviation over the passes of the
        file's score computed per pass (the aggregator applied to each pass's face scores):
        that is the spread of the number reported, which a mean of per-face stds is not (the
        faces of a pass partly average out, and rules like ``max`` or ``confident`` pick
        different faces in different passes). For the ``mean`` aggregator the file score
        equals the mean of the per-pass scores; for the others it can differ from it slightly.

        ``keep_crops``: the face crops go into ``MediaResult.crops`` (for heatmaps), in the
        order of ``per_face``. ``progress(done, total)`` is called as the sampled frames are cut
        (a photo: 1 of 1), ``total`` being the frames the video's plan samples; once the faces
        are scored it is called with ``(frames, frames)``, the frames actually read, so that it
        always ends at its total (``(0, 0)`` for a file of which nothing could be read). An
        exception raised by ``progress`` propagates (it is not the file's failure).
        """
        path = Path(path)
        faces = self.pipeline.file(path)
        crops: list[np.ndarray] = []
        where: list[tuple[int, int, float, list[float]]] = []
        cuts = faces if progress is None else _reporting(faces, progress)
        try:
            for cut in cuts:
                if cut.ok:
                    crops.append(cut.pixels)
                    where.append((cut.frame, cut.track or 0, cut.time,
                                  [round(float(v), 1) for v in cut.box]))
        except _CallbackError as e:  # the caller's own failure (e.g. a cancelled job): theirs
            raise e.__cause__ from None
        except Exception as e:  # noqa: BLE001 - e.g. a detector failure; the batch goes on
            result = MediaResult(str(path), None, faces.frames, 0, f"unreadable: {e}", faces.notes)
        else:
            result = self._scored(path, faces, crops, where)
        if keep_crops and result.per_face:
            result.crops = crops
        if progress is not None:
            progress(result.frames, result.frames)
        return result

    def _scored(self, path: Path, faces, crops: list[np.ndarray],
                where: list[tuple[int, int, float, list[float]]]) -> MediaResult:
        """The result of a file whose cuts have all been read: its failure, no face, or the
        crops scored and aggregated."""
        notes = faces.notes
        if faces.decode_error:
            notes.append(f"decoding stopped early: {faces.decode_error}")
        if faces.failure is not None:
            status, detail = faces.failure
            return MediaResult(str(path), None, faces.frames, 0, f"{status}: {detail}", notes)
        n_frames = faces.frames
        if not crops:
            what = "frame" if n_frames == 1 else f"{n_frames} sampled frames"
            if faces.kind == "image":
                what = "photo"
            return MediaResult(str(path), None, n_frames, 0, f"no_face: no face found in the {what}", notes)
        frame_ids = np.asarray([str(w[0]) for w in where], dtype=object)
        aggregate = AGGREGATORS[self.aggregation]
        result = self._classify(crops)
        scores = result.scores
        stds = [None] * len(crops) if result.std is None else result.std.tolist()
        file_std = None
        if result.replicates is not None:
            # the spread of the file score: over the dropout passes, or the ensemble's members
            file_std = float(np.std([aggregate(r, frame_ids) for r in result.replicates], ddof=1))
        score = aggregate(scores, frame_ids)
        per_face = [
            FaceScore(frame=f, face=t, time=round(when, 3), box=box, score=float(s), score_std=sd)
            for (f, t, when, box), s, sd in zip(where, scores, stds, strict=True)
        ]
        return MediaResult(str(path), float(score), n_frames, len(crops), "", notes, per_face,
                           file_std)


class _CallbackError(Exception):
    """Raised from the caller's progress callback (its exception is the cause)."""


def _reporting(faces, progress: Callable[[int, int], None]):
    """The cuts of ``faces``, calling ``progress(done, total)`` at each new frame (every frame
    gives at least one cut, a frame without a face one without pixels)."""
    planned = faces.planned  # None where a video's plan is open-ended
    last, done = None, 0
    for cut in faces:
        if cut.frame != last:
            last, done = cut.frame, done + 1
            try:
                progress(done, max(done, planned or done))
            except Exception as exc:
                raise _CallbackError from exc
        yield cut


def score_media(
    scorer: MediaScorer,
    files: Sequence[Path],
    progress: bool | None = None,
    *,
    with_crops: Callable[[MediaResult], None] | None = None,
) -> list[MediaResult]:
    """Every file in turn (``progress`` None: as the scorer's options say). ``with_crops``:
    each file's result is handed to it with its face crops (``MediaResult.crops``), which are
    dropped afterwards, so that only one file's crops are held at a time."""
    from rich.console import Console
    from rich.progress import Progress

    if progress is None:
        progress = scorer.options.progress
    results = []
    # on standard error: predict may be writing its CSV to standard output
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("detecting faces and scoring", total=len(files))
        for path in files:
            result = scorer.score(path, keep_crops=with_crops is not None)
            if with_crops is not None:
                with_crops(result)
                result.crops = []
            results.append(result)
            bar.advance(task)
    return results


__all__ = [
    "SELECTIONS", "FaceScore", "MediaResult", "MediaScorer", "prepare_settings", "score_media",
    "with_selection",
]
