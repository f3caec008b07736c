"""Scoring of videos given as face-crop frames with a sequence detector (e.g. ``dual_stream``).

Each video yields ``eval_clips`` evenly spaced clips of ``frames`` frames ``stride`` apart (the
detector's ``preprocessing()["sequence"]``); the video's score is the mean P(fake) of its clips.
A clip with an unreadable frame is left out and reported; a video none of whose clips could be
scored gets NaN and its first error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepfake_detect.data.clips import ClipDataset, VideoFrames, group_frames, sequence_settings
from deepfake_detect.data.datasets import collate_skipping
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.transforms import build_clip_transform
from deepfake_detect.inference.scoring import autocast_for, default_workers, pick_device
from deepfake_detect.models.detector import Detector


@dataclass
class VideoScores:
    videos: list[VideoFrames]
    scores: np.ndarray  # mean P(fake) over the video's scored clips; NaN when none was
    clips: np.ndarray  # scored clips per video
    errors: dict[str, str] = field(default_factory=dict)  # frame path -> reason
    short: int = 0  # videos shorter than a clip: padded by repetition

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
) -> VideoScores:
    """Score the videos whose frames are ``samples`` (grouped by video id, in frame order).

    ``output`` maps a batch of logits to the per-clip value averaged (default P(fake)).
    """
    from rich.progress import Progress

    pre = detector.preprocessing()
    seq = sequence_settings(pre)
    videos = group_frames(samples)
    dataset = ClipDataset(
        videos, build_clip_transform(pre), seq.frames, seq.stride, train=False,
        eval_clips=seq.eval_clips,
    )
    device = device if isinstance(device, torch.device) else pick_device(device)
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
    errors: dict[str, str] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            for path, reason in batch["skipped"]:
                errors[path] = reason
            if batch["image"] is not None:
                with autocast_for(device):
                    logits = detector(batch["image"].to(device, non_blocking=True))
                values = (output or detector.probabilities)(logits.float())
                probs = values.float().cpu().numpy()
                np.add.at(total, batch["video"].numpy(), probs)
                np.add.at(clips, batch["video"].numpy(), 1)
            bar.advance(task, len(batch["skipped"]) + (0 if batch["image"] is None else len(batch["label"])))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(clips > 0, total / np.maximum(clips, 1), np.nan)
    return VideoScores(videos, scores, clips, errors, dataset.short_videos)
