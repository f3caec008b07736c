"""Prediction on raw videos and photos: sample frames, find and crop faces, score, aggregate.

Faces are found and cut by the one face pipeline (:class:`~deepfake_detect.data.faces.pipeline.
FacePipeline`, which ``prepare`` uses too) with the checkpoint's own settings (the ``prepare``
section stored with it), so a model sees at prediction time the same kind of crop it was trained
on; which faces are scored (``select``) may be chosen apart from that. A file in which no face
is found gets a status saying so and no score.

Test-time augmentation and Monte-Carlo dropout (:mod:`deepfake_detect.inference.tta`) work on
the face crops exactly as for face-crop images (``score_files``): each face's score is the mean
over the views and/or the dropout passes. With Monte-Carlo dropout the file score's spread is
the standard deviation over the passes of the file's aggregated score (see
:meth:`MediaScorer.score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import FaceDetector
from deepfake_detect.data.faces.cascade import build_face_finder
from deepfake_detect.data.faces.pipeline import FacePipeline
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.aggregation import AGGREGATORS
from deepfake_detect.inference.scoring import autocast_for, pick_device
from deepfake_detect.inference.tta import (
    TTASpec,
    mc_dropout_passes,
    tta_probabilities,
)
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


def prepare_settings(detector: Detector) -> PrepareConfig:
    """The face pipeline a checkpoint was trained with (defaults for checkpoints without one)."""
    meta = getattr(detector, "checkpoint_meta", None)  # None: a module not read from a file
    stored = meta.prepare if meta is not None else None
    return PrepareConfig.model_validate(stored) if stored else PrepareConfig()


SELECTIONS = ("all", "largest", "relative")


def with_selection(settings: PrepareConfig, select: str | None) -> PrepareConfig:
    """``settings`` with ``crop.select`` replaced by ``select`` (None: unchanged)."""
    if select is None or select == settings.crop.select:
        return settings
    if select not in SELECTIONS:
        raise ConfigError(f"--select {select!r}: choose one of {', '.join(SELECTIONS)}")
    return settings.model_copy(update={"crop": settings.crop.model_copy(update={"select": select})})


class MediaScorer:
    """Holds the classifier, the face detector and the transform; scores one file at a time.

    ``tta``: a view spec (``--tta``) averaged per face; ``mc_dropout`` >= 2: that many passes
    with dropout on, a ``score_std`` per face and per file; ``seed`` seeds the passes (each
    chunk of a file's crops with ``seed`` + the index of its first crop, as ``score_files``
    does per batch), so a file gets the same scores every time for the same ``batch_size``.
    A bad spec or a detector without dropout raises :class:`ConfigError` here, before any
    file is read or the face detector is loaded.

    Faces are found and cut by the :class:`~deepfake_detect.data.faces.pipeline.FacePipeline`
    with ``settings`` (default: the checkpoint's, :func:`prepare_settings`); ``select``
    (largest, all, relative) replaces their ``crop.select`` (``predict`` scores every face).
    """

    def __init__(
        self,
        detector: Detector,
        settings: PrepareConfig | None = None,
        aggregation: str = "mean",
        batch_size: int = 64,
        device: str | None = None,
        face_detector: FaceDetector | None = None,
        tta: TTASpec | str | None = None,
        mc_dropout: int = 0,
        seed: int = 0,
        select: str | None = None,
    ):
        if aggregation not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregation {aggregation!r}; choose one of {', '.join(sorted(AGGREGATORS))}"
            )
        from deepfake_detect.inference.ensemble import Ensemble, check_scoring_options

        self.tta = check_scoring_options(detector, tta, mc_dropout)
        # An ensemble: every member scores the same crops (cut with the first member's face
        # settings), each with its own transform; all members stay on the device.
        self.ensemble = detector if isinstance(detector, Ensemble) else None
        self.mc_dropout = int(mc_dropout)
        self.seed = seed
        self.settings = with_selection(settings or prepare_settings(detector), select)
        self.device = pick_device(device)
        if self.ensemble is not None:
            self.members = [
                (m.detector.to(self.device).eval(), build_transform(m.detector.preprocessing()),
                 self.ensemble.member_output(m.detector))
                for m in self.ensemble.members
            ]
            detector = self.ensemble.primary
        self.detector = detector.to(self.device).eval()
        if self.settings.detect.device == "auto" and self.device.type == "cpu":
            # a user who asked for the CPU gets the face detector there too
            self.settings = self.settings.model_copy(
                update={"detect": self.settings.detect.model_copy(update={"device": "cpu"})}
            )
        self.faces = face_detector or build_face_finder(self.settings.detect, self.settings.crop)
        self.pipeline = FacePipeline(self.settings, self.faces)
        self.transform = build_transform(detector.preprocessing())
        self.aggregation = aggregation
        self.batch_size = batch_size

    def _member_values(self, crops: list[np.ndarray]) -> np.ndarray:
        """An ensemble's member values per crop, ``(members, F)``."""
        return np.stack([self._classify(crops, *member) for member in self.members])

    @torch.inference_mode()
    def _classify(self, crops: list[np.ndarray], detector: Detector | None = None,
                  transform=None, output=None) -> np.ndarray:
        """P(fake) (or ``output`` of the logits) per crop, ``(F,)``; with MC dropout one row
        per pass, ``(n, F)``. Default: the scorer's own detector and transform."""
        detector = detector or self.detector
        transform = transform or self.transform
        output = output or detector.probabilities
        out = []
        for start in range(0, len(crops), self.batch_size):
            x = torch.stack([transform(c) for c in crops[start : start + self.batch_size]])
            x = x.to(self.device, non_blocking=True)
            with autocast_for(self.device):
                if self.mc_dropout:
                    values = mc_dropout_passes(
                        detector, x, self.mc_dropout, self.tta, output, max_batch=self.batch_size,
                        seed=self.seed + start,
                    )
                elif self.tta is not None:
                    values = tta_probabilities(detector, x, self.tta, output,
                                               max_batch=self.batch_size)
                else:
                    values = output(detector(x).float())
            out.append(values.float().cpu().numpy())
        return np.concatenate(out, axis=-1).astype(np.float64)

    def score(self, path: str | Path) -> MediaResult:
        """Find, crop and score the faces of one file and aggregate them into its score.

        With Monte-Carlo dropout each face's score is its mean over the passes, and the file's
        score is the aggregation of those means, so that it is reproducible from the per-face
        rows like a plain score. ``score_std`` is the standard deviation over the passes of the
        file's score computed per pass (the aggregator applied to each pass's face scores):
        that is the spread of the number reported, which a mean of per-face stds is not (the
        faces of a pass partly average out, and rules like ``max`` or ``confident`` pick
        different faces in different passes). For the ``mean`` aggregator the file score
        equals the mean of the per-pass scores; for the others it can differ from it slightly.
        """
        path = Path(path)
        faces = self.pipeline.file(path)
        crops: list[np.ndarray] = []
        where: list[tuple[int, int, float, list[float]]] = []
        try:
            for cut in faces:
                if cut.ok:
                    crops.append(cut.pixels)
                    where.append((cut.frame, cut.track or 0, cut.time,
                                  [round(float(v), 1) for v in cut.box]))
        except Exception as e:  # noqa: BLE001 - e.g. a detector failure; the batch goes on
            return MediaResult(str(path), None, faces.frames, 0, f"unreadable: {e}", faces.notes)
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
        if self.ensemble is not None:
            # score_std of an ensemble: the spread of its members' file scores
            values = self._member_values(crops)
            scores = self.ensemble.combine(values)
            members = self.ensemble.member_probabilities(values)
            stds = members.std(axis=0, ddof=1).tolist()
            file_std = float(np.std([aggregate(p, frame_ids) for p in members], ddof=1))
            values = scores
        else:
            values = self._classify(crops)
            scores, stds, file_std = values, [None] * len(crops), None
        if self.mc_dropout:
            scores = values.mean(axis=0)
            stds = values.std(axis=0, ddof=1).tolist()
            per_pass = np.asarray([aggregate(p, frame_ids) for p in values])
            file_std = float(per_pass.std(ddof=1))
        score = aggregate(scores, frame_ids)
        per_face = [
            FaceScore(frame=f, face=t, time=round(when, 3), box=box, score=float(s), score_std=sd)
            for (f, t, when, box), s, sd in zip(where, scores, stds, strict=True)
        ]
        return MediaResult(str(path), float(score), n_frames, len(crops), "", notes, per_face,
                           file_std)


def score_media(
    scorer: MediaScorer, files: Sequence[Path], progress: bool = True
) -> list[MediaResult]:
    from rich.console import Console
    from rich.progress import Progress

    results = []
    # on standard error: predict may be writing its CSV to standard output
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("detecting faces and scoring", total=len(files))
        for path in files:
            results.append(scorer.score(path))
            bar.advance(task)
    return results
