"""Scoring of videos given as face-crop frames with a sequence detector (e.g. ``dual_stream``),
in the older form that takes the options one by one.

Each video yields ``eval_clips`` evenly spaced clips of ``frames`` frames ``stride`` apart (the
detector's ``preprocessing()["sequence"]``); the video's score is the mean P(fake) of its clips.
A clip with an unreadable frame is left out and reported; a video none of whose clips could be
scored gets NaN and its first error. Test-time augmentation applies each view alike to every
frame of a clip; Monte-Carlo dropout averages over passes with dropout on.

The work is done by the inference core: ``LoadedModel.score_clips``
(:mod:`deepfake_detect.inference.predictor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from deepfake_detect.data.samples import Sample
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import (
    LoadedModel,
    VideoScores,
    as_predictor,
    is_sequence_detector,
)
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector


def score_videos(
    detector: Detector | LoadedModel,
    samples: Sequence[Sample],
    batch_size: int = 8,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "scoring clips",
    output: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    seed: int = 0,
) -> VideoScores:
    """Score the videos whose frames are ``samples`` (grouped by video id, in frame order);
    see :meth:`LoadedModel.score_clips`. A bad spec or a detector without dropout raises
    :class:`~deepfake_detect.errors.ConfigError` before any frame is read."""
    options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                             tta=tta, mc_dropout=mc_dropout, seed=seed, progress=progress)
    return as_predictor(detector).score_clips(samples, options, description, output=output)


__all__ = ["VideoScores", "is_sequence_detector", "score_videos"]
