"""Scoring of videos given as face-crop frames with a sequence detector (e.g. ``dual_stream``).

Each video yields ``eval_clips`` evenly spaced clips of ``frames`` frames ``stride`` apart (the
detector's ``preprocessing()["sequence"]``); the video's score is the mean P(fake) of its clips.
A clip with an unreadable frame is left out and reported; a video none of whose clips could be
scored gets NaN and its first error.

Test-time augmentation applies each view alike to every frame of a clip (a flipped clip is every
frame flipped) and averages P(fake) over the views per clip; Monte-Carlo dropout averages over
passes with dropout on (:mod:`deepfake_detect.inference.tta`). The video score is then the mean
over its clips of those clip scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepfake_detect.data.video_clips import ClipDataset, VideoFrames, group_frames, sequence_settings
from deepfake_detect.data.datasets import collate_skipping
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.transforms import build_clip_transform
from deepfake_detect.inference.scoring import autocast_for, check_loader_options, default_workers
from deepfake_detect.inference.tta import (
    TTASpec,
    check_mc_dropout,
    mc_dropout_passes,
    parse_tta,
    tta_probabilities,
)
from deepfake_detect.models.detector import Detector


@dataclass
class VideoScores:
    """Per video: the score, the clips scored, and with Monte-Carlo dropout ``std``, the
    standard deviation over the passes of the video's mean-over-clips score (NaN where the
    video was not scored); None without it."""

    videos: list[VideoFrames]
    scores: np.ndarray  # mean P(fake) over the video's scored clips; NaN when none was
    clips: np.ndarray  # scored clips per video
    errors: dict[str, str] = field(default_factory=dict)  # frame path -> reason
    short: int = 0  # videos shorter than a clip: padded by repetition
    std: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.scores)


def is_sequence_detector(detector: Detector) -> bool:
    return "sequence" in detector.preprocessing()


@torch.inference_mode()
def score_videos(
    detector: Detector,
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
    """Score the videos whose frames are ``samples`` (grouped by video id, in frame order).

    ``output`` maps a batch of logits to the per-clip value averaged (default P(fake)).
    ``tta``: each clip's value is the mean over the views, each applied to every frame of the
    clip. ``mc_dropout`` >= 2: the mean over that many passes with dropout on, and
    ``VideoScores.std``: the std over the passes of the video's mean-over-clips score (the
    spread of the number reported, rather than the mean of the clips' stds, which is never
    smaller and overstates it: the clips' dropout noise partly averages out in their mean).
    ``seed`` seeds the passes, each batch with ``seed`` + the index of its first clip, so scores
    are reproducible for the same videos and batch size. A bad spec or a detector without
    dropout raises :class:`~deepfake_detect.errors.ConfigError` before any frame is read.
    """
    from rich.console import Console
    from rich.progress import Progress

    spec = parse_tta(tta)
    if mc_dropout:
        check_mc_dropout(detector, mc_dropout)
    pre = detector.preprocessing()
    seq = sequence_settings(pre)
    videos = group_frames(samples)
    dataset = ClipDataset(
        videos, build_clip_transform(pre), seq.frames, seq.stride, train=False,
        eval_clips=seq.eval_clips,
    )
    device = check_loader_options(batch_size, num_workers, device)
    detector = detector.to(device).eval()
    if device.type == "cuda":  # the backbones' convolutions run faster channels-last
        detector = detector.to(memory_format=torch.channels_last)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        num_workers=min(workers, max(1, len(dataset) // batch_size)) if workers else 0,
        pin_memory=device.type == "cuda", collate_fn=collate_skipping,
    )
    total = np.zeros(len(videos))
    clips = np.zeros(len(videos), dtype=np.int64)
    # per pass, the sum of each video's clip values: its per-pass score is that over its clips
    pass_totals = np.zeros((mc_dropout, len(videos))) if mc_dropout else None
    errors: dict[str, str] = {}
    # on stderr: predict may be writing its CSV to stdout
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            for path, reason in batch["skipped"]:
                errors[path] = reason
            if batch["image"] is not None:
                x = batch["image"].to(device, non_blocking=True)
                video = batch["video"].numpy()
                with autocast_for(device):
                    if mc_dropout:
                        passes = mc_dropout_passes(
                            detector, x, mc_dropout, spec, output, max_batch=batch_size,
                            seed=seed + int(batch["index"][0]),
                        ).float().cpu().numpy()
                        for k in range(mc_dropout):
                            np.add.at(pass_totals[k], video, passes[k])
                        probs = passes.mean(axis=0)
                    else:
                        if spec is not None:
                            values = tta_probabilities(detector, x, spec, output,
                                                       max_batch=batch_size)
                        else:
                            values = (output or detector.probabilities)(detector(x).float())
                        probs = values.float().cpu().numpy()
                np.add.at(total, video, probs)
                np.add.at(clips, video, 1)
            bar.advance(task, len(batch["skipped"]) + (0 if batch["image"] is None else len(batch["label"])))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(clips > 0, total / np.maximum(clips, 1), np.nan)
        std = None
        if pass_totals is not None:
            per_pass = pass_totals / np.maximum(clips, 1)
            std = np.where(clips > 0, per_pass.std(axis=0, ddof=1), np.nan)
    return VideoScores(videos, scores, clips, errors, dataset.short_videos, std)
