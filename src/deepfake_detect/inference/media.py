"""Prediction on raw videos and photos: sample frames, find and crop faces, score, aggregate.

Faces are cut with the checkpoint's own face-pipeline settings (the ``prepare`` section stored
with it), so a model sees at prediction time the same kind of crop it was trained on. A file in
which no face is found gets a status saying so and no score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import FaceDetector
from deepfake_detect.data.faces.cascade import build_face_finder
from deepfake_detect.data.faces.crop import cut_faces
from deepfake_detect.data.faces.track import FaceTracker
from deepfake_detect.data.images import load_rgb
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.data.video import VideoError, is_video_file, read_frames
from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.aggregation import AGGREGATORS
from deepfake_detect.inference.scoring import autocast_for, pick_device
from deepfake_detect.models.detector import Detector


@dataclass
class FaceScore:
    frame: int
    face: int
    time: float
    box: list[float]
    score: float


@dataclass
class MediaResult:
    filename: str
    score: float | None
    frames: int  # frames (or photos) looked at
    faces: int  # faces scored
    error: str = ""
    notes: list[str] = field(default_factory=list)
    per_face: list[FaceScore] = field(default_factory=list)


def prepare_settings(detector: Detector) -> PrepareConfig:
    """The face pipeline a checkpoint was trained with (defaults for checkpoints without one)."""
    meta = getattr(detector, "checkpoint_meta", None) or {}
    stored = (meta.get("experiment") or {}).get("prepare")
    return PrepareConfig.model_validate(stored) if stored else PrepareConfig()


def _frames_of(path: Path, settings: PrepareConfig, notes: list[str]) -> Iterator[tuple[int, float, np.ndarray]]:
    if is_video_file(path):
        stream = read_frames(path, settings.frames)
        for frame in stream:
            yield frame.index, frame.time, frame.image
        notes.extend(stream.notes)
        if stream.error:
            notes.append(f"decoding stopped early: {stream.error}")
    else:
        yield 0, 0.0, np.asarray(load_rgb(path))


class MediaScorer:
    """Holds the classifier, the face detector and the transform; scores one file at a time."""

    def __init__(
        self,
        detector: Detector,
        settings: PrepareConfig | None = None,
        aggregation: str = "mean",
        batch_size: int = 64,
        device: str | None = None,
        face_detector: FaceDetector | None = None,
    ):
        if aggregation not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregation {aggregation!r}; choose one of {', '.join(sorted(AGGREGATORS))}"
            )
        self.settings = settings or prepare_settings(detector)
        self.device = pick_device(device)
        self.detector = detector.to(self.device).eval()
        if self.settings.detect.device == "auto" and self.device.type == "cpu":
            # a user who asked for the CPU gets the face detector there too
            self.settings = self.settings.model_copy(
                update={"detect": self.settings.detect.model_copy(update={"device": "cpu"})}
            )
        self.faces = face_detector or build_face_finder(self.settings.detect, self.settings.crop)
        self.transform = build_transform(detector.preprocessing())
        self.aggregation = aggregation
        self.batch_size = batch_size

    @torch.inference_mode()
    def _classify(self, crops: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.batch_size):
            x = torch.stack([self.transform(c) for c in crops[start : start + self.batch_size]])
            x = x.to(self.device, non_blocking=True)
            with autocast_for(self.device):
                logits = self.detector(x)
            out.append(self.detector.probabilities(logits.float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def score(self, path: str | Path) -> MediaResult:
        path = Path(path)
        notes: list[str] = []
        crop_cfg = self.settings.crop
        tracker = FaceTracker() if crop_cfg.select != "largest" else None
        crops: list[np.ndarray] = []
        where: list[tuple[int, int, float, list[float]]] = []
        n_frames = 0
        batch: list[tuple[int, float, np.ndarray]] = []

        def flush() -> None:
            found = self.faces.detect([img for _, _, img in batch])
            for (index, when, img), faces in zip(batch, found, strict=True):
                for cut in cut_faces(img, faces, crop_cfg, tracker):
                    crops.append(cut.pixels)
                    box = [round(float(v), 1) for v in cut.face.box]
                    where.append((index, cut.track or 0, when, box))
            batch.clear()

        try:
            for item in _frames_of(path, self.settings, notes):
                batch.append(item)
                n_frames += 1
                if len(batch) >= self.settings.detect.batch_size:
                    flush()
            if batch:
                flush()
        except VideoError as e:
            return MediaResult(str(path), None, n_frames, 0, f"{e.reason}: {e}", notes)
        except Exception as e:  # noqa: BLE001 - unreadable photo etc.; the batch goes on
            return MediaResult(str(path), None, n_frames, 0, f"unreadable: {e}", notes)
        if n_frames == 0:
            return MediaResult(str(path), None, 0, 0, "no_frames: no frame could be decoded", notes)
        if not crops:
            what = "frame" if n_frames == 1 else f"{n_frames} sampled frames"
            return MediaResult(str(path), None, n_frames, 0, f"no_face: no face found in the {what}", notes)
        scores = self._classify(crops)
        frame_ids = np.asarray([str(w[0]) for w in where], dtype=object)
        score = AGGREGATORS[self.aggregation](scores, frame_ids)
        per_face = [
            FaceScore(frame=f, face=t, time=round(when, 3), box=box, score=float(s))
            for (f, t, when, box), s in zip(where, scores, strict=True)
        ]
        return MediaResult(str(path), float(score), n_frames, len(crops), "", notes, per_face)


def score_media(
    scorer: MediaScorer, files: Sequence[Path], progress: bool = True
) -> list[MediaResult]:
    from rich.progress import Progress

    results = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("detecting faces and scoring", total=len(files))
        for path in files:
            results.append(scorer.score(path))
            bar.advance(task)
    return results
