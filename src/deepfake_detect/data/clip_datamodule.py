"""The data module of video-level (clip) detectors: FaceDataModule's samples, served as clips.

Discovery, video cutting, the split (grouped by video, stratified by label: the seed's 85/15 is
``data.val_fraction: 0.15``), verification and the skipped-file counts are FaceDataModule's.
Only the loaders differ: their items are clips of ``preprocessing["sequence"]`` (see
:mod:`deepfake_detect.data.video_clips`), one random clip per training video per epoch and evenly
spaced clips per video in evaluation, with ``batch["video"]`` indexing
``loader.dataset.videos`` so that clip scores can be averaged per video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from deepfake_detect.data.video_clips import (
    ClipDataset,
    ClipEpochSampler,
    VideoFrames,
    frames_folder_samples,
    group_frames,
    is_short,
    sequence_settings,
)
from deepfake_detect.data.datamodule import FaceDataModule
from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.data.splits import class_counts
from deepfake_detect.data.transforms import build_clip_transform

__all__ = ["ClipDataModule", "frames_folder_samples"]


class ClipDataModule(FaceDataModule):
    """Train/val/test loaders of clips ``(B, T, 3, S, S)`` over the datasets in ``data.path``.

    Takes the arguments of :class:`FaceDataModule`; ``preprocessing["sequence"]`` holds
    ``frames``, ``stride`` and ``eval_clips`` (defaults 10, 3, 4). ``data.feature_cache`` is
    not used: clips are always decoded.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sequence = sequence_settings(self.preprocessing)
        self._videos: list[VideoFrames] | None = None

    # -- facts ---------------------------------------------------------------------------
    def all_videos(self) -> list[VideoFrames]:
        """Every video of the samples (after setup), frames in order, one face per frame."""
        if self._videos is None:
            self._videos = group_frames(self._require())
        return self._videos

    def videos(self, split: str) -> list[VideoFrames]:
        return [v for v in self.all_videos() if v.split == split]

    def video_counts(self) -> dict[str, dict[str, int]]:
        """Videos per split and class, e.g. ``{"train": {"real": 5, "fake": 6}}``."""
        # one stand-in sample per video reuses the image counter (and its split order)
        stand_ins = [
            Sample(v.frames[0], v.label, v.video, v.split, v.dataset) for v in self.all_videos()
        ]
        return class_counts(stand_ins)

    def short_videos(self, split: str | None = None) -> int:
        """Videos (of ``split``, or all) too short for one clip: padded by repetition."""
        videos = self.all_videos() if split is None else self.videos(split)
        s = self.sequence
        return sum(is_short(len(v), s.frames, s.stride) for v in videos)

    def class_weights(self) -> torch.Tensor:
        """Inverse train-class frequencies ``[real, fake]`` counted in videos (a training
        epoch draws one clip per video), normalised to mean 1."""
        counts = self.video_counts()["train"]
        inv = torch.tensor([1.0 / counts[name] for name in CLASS_NAMES], dtype=torch.float32)
        return inv / inv.mean()

    def summary(self) -> str:
        s = self.sequence
        lines = [super().summary()]
        per_split = "; ".join(
            f"{split} {sum(per.values())} ("
            + ", ".join(f"{n} {name}" for name, n in per.items())
            + ")"
            for split, per in self.video_counts().items()
        )
        lines.append(f"videos: {per_split}")
        lines.append(
            f"clips: {s.frames} frames at stride {s.stride} (span {s.span} frames), "
            f"1 random clip per training video per epoch, up to {s.eval_clips} evenly spaced "
            "clips per evaluation video"
        )
        short = {split: self.short_videos(split) for split in self.video_counts()}
        short = {split: n for split, n in short.items() if n}
        detail = f" ({', '.join(f'{k} {n}' for k, n in short.items())})" if short else ""
        lines.append(
            f"videos shorter than a clip (< {s.span} frames), padded by repetition: "
            f"{sum(short.values())}{detail}"
        )
        return "\n".join(lines)

    # -- loaders -------------------------------------------------------------------------
    def clip_dataset(self, videos: Sequence[VideoFrames], train: bool) -> ClipDataset:
        s = self.sequence
        augment = self.data.augment if train else None
        return ClipDataset(
            videos, build_clip_transform(self.preprocessing, augment), s.frames, s.stride,
            train=train, eval_clips=s.eval_clips, seed=self.seed,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.videos("train")
        batch = self.data.batch_size
        return DataLoader(
            self.clip_dataset(train, train=True), batch,
            sampler=ClipEpochSampler(self.train_sampler(train)),
            drop_last=len(train) > batch, **self._loader_options(),
        )

    def eval_dataloader(
        self, samples: Sequence[Sample], batch_size: int | None = None
    ) -> DataLoader:
        """Evaluation clips of the videos of ``samples``, in order, without augmentation;
        ``batch["video"]`` indexes ``loader.dataset.videos`` (ids: ``loader.dataset.video_ids``),
        ``batch["index"]`` the clip item."""
        dataset = self.clip_dataset(group_frames(samples), train=False)
        size = batch_size or self.data.eval_batch_size or self.data.batch_size
        return DataLoader(dataset, size, shuffle=False, drop_last=False, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.samples("val"))

    def test_dataloader(self) -> DataLoader | list:
        """The test loader, or an empty list when there is no test split."""
        test = self.samples("test")
        return self.eval_dataloader(test) if test else []

