"""The model, loaded once, and the scoring every request shares.

Each request is scored by a :class:`~deepfake_detect.inference.media_scoring.MediaScorer` (the
class ``predict`` uses on photos and videos), so the face crops, per-face scores and file score
are ``predict``'s. Only where the crops go differs: through one
:class:`~deepfake_detect.batching.BatchMerger` per set of test-time views, so that the crops of
requests arriving together are scored in one forward pass. Face detection is shared the same
way (:class:`~deepfake_detect.data.faces.base.MergedDetector`). Both run one batch at a time, so
neither the model nor the face detector ever sees two threads; heatmaps, which hook into the
model, take the same lock as the crop batches.

A :class:`Deadline` is checked before every detection batch and every crop batch, so that a
request past its time limit stops at the next batch instead of running on unseen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.batching import BatchMerger
from deepfake_detect.data.faces.base import FaceDetector, MergedDetector
from deepfake_detect.errors import ConfigError, DeepfakeDetectError
from deepfake_detect.inference.aggregation import AGGREGATORS
from deepfake_detect.inference.media_scoring import MediaResult, MediaScorer
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import CropScores, Predictor
from deepfake_detect.serve.card import is_calibrated, model_card
from deepfake_detect.serve.errors import ApiError
from deepfake_detect.serve.results import result_json

class TimedOut(Exception):
    """Raised inside a request's work once its deadline has passed."""


class Deadline:
    """A request's time limit, checked between batches; :meth:`cancel` ends it at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def expired(self) -> bool:
        return self._cancelled or time.monotonic() > self._at

    def check(self) -> None:
        if self.expired:
            raise TimedOut(f"over the time limit of {self.seconds:g} s")


@dataclass(frozen=True)
class RequestOptions:
    """What one upload asks for (already checked: :meth:`Engine.request`)."""

    aggregation: str = "mean"
    tta: Any = None  # a parsed TTASpec or None
    explain: bool = False

    def describe(self) -> dict[str, Any]:
        return {"aggregation": self.aggregation,
                "tta": self.tta.names if self.tta is not None else None,
                "explain": self.explain}


class _Timed(FaceDetector):
    """The shared face detector, behind the request's deadline."""

    name = "deadline"

    def __init__(self, inner: FaceDetector, deadline: Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def detect(self, frames: Sequence[np.ndarray]) -> list:
        self.deadline.check()
        return self.inner.detect(frames)


class _RequestScorer(MediaScorer):
    """``predict``'s scorer for one request, its crops scored in the engine's merged batches;
    keeps the crops (for heatmaps) and the time spent scoring them."""

    def __init__(self, engine: Engine, request: RequestOptions, deadline: Deadline) -> None:
        options = engine.options if request.tta is None else engine.options.replace(tta=request.tta)
        super().__init__(engine.predictor, settings=engine.face_settings,
                         aggregation=request.aggregation, options=options,
                         face_detector=_Timed(engine.detector, deadline))
        self.engine = engine
        self.deadline = deadline
        self.crops: list[np.ndarray] = []
        self.scoring_s = 0.0

    def _classify(self, crops: list[np.ndarray]) -> CropScores:
        start = time.perf_counter()
        self.crops = crops
        try:
            return self.engine.score_crops(crops, self.options, self.deadline)
        finally:
            self.scoring_s += time.perf_counter() - start


class Engine:
    """The predictor (one model or an ensemble), its face pipeline settings, the shared face
    detector and the crop batch mergers; :meth:`analyse` answers one upload."""

    def __init__(self, predictor: Predictor, *, device: str = "auto", batch_size: int = 64,
                 batch_wait_s: float = 0.005) -> None:
        if predictor.input_kind != "images":
            raise ConfigError("serve scores photos and videos face by face with an image "
                              "detector; a video detector (clips of frames) cannot be served")
        self.predictor = predictor
        # as predict's: the same batch size, device and precision give the same numbers
        self.options = ScoringOptions(batch_size=batch_size, num_workers=0, device=device,
                                      progress=False)
        base = MediaScorer(predictor, select="all", options=self.options)  # predict's default
        self.face_settings = base.settings
        self.detector = MergedDetector(base.faces, self.face_settings.detect.batch_size)
        self.batch_wait_s = batch_wait_s
        self.model_lock = threading.Lock()  # crop batches and heatmaps, one at a time
        self._mergers: dict[tuple[str, ...], BatchMerger] = {}
        self._mergers_lock = threading.Lock()
        self.card = model_card(predictor)
        self.calibrated = is_calibrated(predictor)
        self.waiting = 0  # crop calls waiting for their batch (the queue-depth metric)
        self._waiting_lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return float(self.predictor.threshold)

    # -- options ---------------------------------------------------------------------------------

    def request(self, aggregation: str | None = None, tta: str | None = None,
                explain: bool = False) -> RequestOptions:
        """A checked :class:`RequestOptions`; a bad option is an :class:`ApiError` 422."""
        aggregation = aggregation or "mean"
        if aggregation not in AGGREGATORS:
            raise ApiError(422, "bad_option", f"aggregation {aggregation!r}: choose one of "
                           f"{', '.join(sorted(AGGREGATORS))}")
        try:
            spec = self.options.replace(tta=tta).tta if tta else None
        except ConfigError as e:
            raise ApiError(422, "bad_option", str(e).replace("--tta", "tta")) from None
        return RequestOptions(aggregation, spec, bool(explain))

    # -- crop batches ----------------------------------------------------------------------------

    def merger(self, options: ScoringOptions) -> BatchMerger:
        """The merger of crops scored with ``options``' views (crops with other views cannot
        share a forward pass)."""
        key = tuple(options.tta.names) if options.tta is not None else ()
        with self._mergers_lock:
            if key not in self._mergers:
                self._mergers[key] = BatchMerger(self._batch_fn(options), self.options.batch_size,
                                                 self.batch_wait_s)
            return self._mergers[key]

    @property
    def batches(self) -> int:
        """Crop batches run so far, over every merger."""
        return sum(m.batches for m in list(self._mergers.values()))

    def _batch_fn(self, options: ScoringOptions) -> Callable[[list[np.ndarray]], list[tuple]]:
        def run(crops: list[np.ndarray]) -> list[tuple]:
            with self.model_lock:
                result = self.predictor.score_crops(crops, options)
            std, rep = result.std, result.replicates
            return [(float(result.scores[i]), None if std is None else float(std[i]),
                     None if rep is None else rep[:, i]) for i in range(len(crops))]
        return run

    def score_crops(self, crops: list[np.ndarray], options: ScoringOptions,
                    deadline: Deadline) -> CropScores:
        """:meth:`Predictor.score_crops` of ``crops``, computed in merged batches: a video's
        many crops go a batch at a time, so that image requests get in between."""
        merger = self.merger(options)
        rows: list[tuple] = []
        step = self.options.batch_size
        for start in range(0, len(crops), step):
            deadline.check()
            with self._waiting_lock:
                self.waiting += 1
            try:
                rows += merger(crops[start:start + step])
            finally:
                with self._waiting_lock:
                    self.waiting -= 1
        scores = np.asarray([r[0] for r in rows], dtype=np.float64)
        std = None if rows[0][1] is None else np.asarray([r[1] for r in rows], dtype=np.float64)
        replicates = None if rows[0][2] is None else np.stack([r[2] for r in rows], axis=1)
        return CropScores(scores, std, replicates)

    # -- one upload ------------------------------------------------------------------------------

    def analyse(self, path: Path, *, media: str, filename: str, request: RequestOptions,
                deadline: Deadline, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, Any]:
        """The JSON answer for the file at ``path`` (see :func:`results.result_json`).

        Raises :class:`ApiError` 422 for a file that cannot be read and :class:`TimedOut`
        past the deadline."""
        start = time.perf_counter()
        scorer = _RequestScorer(self, request, deadline)
        result: MediaResult = scorer.score(path, keep_crops=request.explain, progress=progress)
        deadline.check()  # a detector stopped by the deadline reads as an unreadable file
        scored = time.perf_counter()
        if result.score is None and not result.error.startswith("no_face"):
            kind, _, detail = result.error.partition(":")
            detail = detail.strip().replace(str(path), repr(filename))
            raise ApiError(422, kind or "unreadable", f"cannot analyse {filename!r}: {detail}")
        heatmaps = None
        notes = [n.replace(str(path), repr(filename)) for n in result.notes]
        if request.explain and result.score is not None:
            crops = getattr(result, "crops", None) or scorer.crops
            try:
                heatmaps = self.explain(crops, scorer.options)
            except DeepfakeDetectError as e:  # e.g. a model that cannot be explained: scores stand
                notes.append(f"no heatmaps: {e}")
        done = time.perf_counter()
        timings = {
            "decode_detect": scored - start - scorer.scoring_s,
            "scoring": scorer.scoring_s,
            "explain": done - scored,
            "total": done - start,
        }
        return result_json(result, media=media, filename=filename,
                           aggregation=request.aggregation, options=request.describe(),
                           threshold=self.threshold, calibrated=self.calibrated, card=self.card,
                           heatmaps=heatmaps, timings=timings, notes=notes)

    def explain(self, crops: list[np.ndarray], options: ScoringOptions) -> list[np.ndarray]:
        """Heatmap overlays of ``crops`` (:func:`deepfake_detect.inference.explain.explain_crops`),
        computed under the model lock: they hook into the model the batches run through."""
        from deepfake_detect.inference.explain import explain_crops

        with self.model_lock:
            return list(explain_crops(self.predictor, crops, options))
