"""Scoring of image files, in the older form that takes the options one by one.

The work is done by the inference core (:mod:`deepfake_detect.inference.predictor`:
``Predictor.score_images`` with one :class:`~deepfake_detect.inference.options.ScoringOptions`);
this module keeps :func:`score_files` and the device helpers importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from deepfake_detect.data.samples import Sample
from deepfake_detect.inference.options import (
    DEVICE_HELP,
    MAX_BATCH_SIZE,
    ScoringOptions,
    autocast_for,
    check_loader_options,
    default_workers,
    pick_device,
)
from deepfake_detect.inference.predictor import LoadedModel, Scores, as_predictor
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.detector import Detector


def score_files(
    detector: Detector | LoadedModel,
    paths: Sequence[str | Path] | Sequence[Sample],
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "scoring",
    output: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    seed: int = 0,
) -> Scores:
    """Score image files in order with one model; unreadable files get NaN and an error.

    The options as in :class:`ScoringOptions`; ``output`` maps a batch of logits to the value
    kept (default P(fake)). See :meth:`LoadedModel.score_images`.
    """
    options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                             tta=tta, mc_dropout=mc_dropout, seed=seed, progress=progress)
    return as_predictor(detector).score_images(paths, options, description, output=output)


__all__ = [
    "DEVICE_HELP", "MAX_BATCH_SIZE", "Scores", "autocast_for", "check_loader_options",
    "default_workers", "pick_device", "score_files",
]
