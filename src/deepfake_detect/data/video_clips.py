"""Clips of T face crops from one video, for video-level detectors.

A video is the ordered list of its frames' face crops (:func:`group_frames`). A clip is ``T``
of them at a fixed ``stride``: frames ``start, start + stride, ..., start + (T - 1) * stride``,
so it spans ``(T - 1) * stride + 1`` frames (:func:`clip_span`). Training draws one clip per
video per epoch at a random start (seeded by seed, epoch and item, so a resumed run sees the
same clips); evaluation takes up to ``eval_clips`` evenly spaced clips per video
(:func:`clip_starts`), and a video's score is the mean over its clips
(:func:`average_by_video`, with ``batch["video"]``).

Padding: a video with fewer frames than one clip spans is *short*. Its clip takes the frames at
the stride that exist and then loops back to the clip's first frame: with 5 frames, T = 6 and
stride 2 the clip is frames ``0 2 4 0 2 4`` (the last three padded). Looping keeps each step
between neighbouring clip frames a real step of the video except at the seams, where repeating
the last frame instead would fill the clip with still frames (a pattern real videos at the
stride rarely show, and one a temporal model could key on).

One face per frame: ``prepare`` writes every selected face of a frame (``00012_0.png``,
``00012_1.png``, sharing ``Sample.frame``). A clip must follow one face, so of the crops of a
frame only the one with the lowest face (track) index is kept: 0, the first face that prepare's
tracker followed (the largest with ``select: largest``, which writes one face anyway). Crops of
the other faces are not used by clip models.

This module imports no model code; the detector's ``preprocessing()["sequence"]`` gives
``frames``, ``stride`` and ``eval_clips`` (:func:`sequence_settings`).
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from deepfake_detect.data.images import ImageLoadError, load_rgb
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.sources import IMAGE_EXTENSIONS, is_image_file, log_discovery, scan
from deepfake_detect.errors import ConfigError, DataError

DEFAULT_FRAMES = 10
DEFAULT_STRIDE = 3
DEFAULT_EVAL_CLIPS = 4

# prepare's crop names: "<frame>" or "<frame>_<face>"
_CROP_NAME = re.compile(r"^(?P<frame>\d+)(?:_(?P<face>\d+))?$")
_DIGITS = re.compile(r"\d+")


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSettings:
    """Clip geometry: ``frames`` per clip, ``stride`` between them, clips per video at eval."""

    frames: int = DEFAULT_FRAMES
    stride: int = DEFAULT_STRIDE
    eval_clips: int = DEFAULT_EVAL_CLIPS

    @property
    def span(self) -> int:
        return clip_span(self.frames, self.stride)


def sequence_settings(preprocessing: Mapping[str, Any]) -> SequenceSettings:
    """The clip settings in a detector's ``preprocessing["sequence"]`` (defaults 10, 3, 4)."""
    given = preprocessing.get("sequence") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"preprocessing['sequence'] must be a mapping of frames, stride, eval_clips, "
            f"not {given!r}"
        )
    values = {}
    for key, default in (
        ("frames", DEFAULT_FRAMES), ("stride", DEFAULT_STRIDE), ("eval_clips", DEFAULT_EVAL_CLIPS)
    ):
        raw = given.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise ConfigError(
                f"preprocessing['sequence']['{key}'] = {raw!r} must be a whole number >= 1"
            )
        values[key] = raw
    return SequenceSettings(**values)


# -- videos ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoFrames:
    """One video's face crops in frame order (one face per frame)."""

    video: str  # the samples' video id (unique within its dataset)
    label: int  # 0 real, 1 fake, -1 unknown (e.g. predict --video-dir)
    split: str | None
    dataset: str
    frames: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.frames)


def frame_number(sample: Sample) -> int | None:
    """The frame number of a crop: from ``Sample.frame`` when it ends in a number, else the
    number in the file name (prepare's ``<frame>[_<face>]``, else its last run of digits)."""
    if sample.frame is not None:
        tail = sample.frame.rsplit("/", 1)[-1]
        if tail.isdigit():
            return int(tail)
    stem = sample.path.stem
    if m := _CROP_NAME.match(stem):
        return int(m.group("frame"))
    digits = _DIGITS.findall(stem)
    return int(digits[-1]) if digits else None


def face_index(path: Path) -> int:
    """The face (track) index in a prepare crop name ``<frame>_<face>``; 0 otherwise."""
    m = _CROP_NAME.match(path.stem)
    return int(m.group("face")) if m and m.group("face") is not None else 0


def _frame_order(sample: Sample) -> tuple[bool, int, str]:
    # numbered frames by number (2 before 10), then any unnumbered ones by name
    n = frame_number(sample)
    return (n is None, n if n is not None else 0, str(sample.path))


def _one_face_per_frame(members: list[Sample]) -> list[Sample]:
    """Of the crops sharing a ``Sample.frame``, the one with the lowest face index."""
    best: dict[str, Sample] = {}
    kept: list[Sample] = []
    for s in members:
        if s.frame is None:
            kept.append(s)
            continue
        other = best.get(s.frame)
        if other is None or (face_index(s.path), str(s.path)) < (
            face_index(other.path), str(other.path)
        ):
            best[s.frame] = s
    return kept + list(best.values())


def group_frames(samples: Sequence[Sample]) -> list[VideoFrames]:
    """The videos of ``samples`` (by dataset and video id, in order of first appearance), each
    with its crops in frame order and one face per frame (see the module docstring)."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.dataset, s.video), []).append(s)
    videos = []
    for (dataset, video), members in groups.items():
        kept = sorted(_one_face_per_frame(members), key=_frame_order)
        # ids never span labels in scanned data; a majority vote copes with any that do
        label = Counter(s.label for s in members).most_common(1)[0][0]
        split = Counter(s.split for s in members).most_common(1)[0][0]
        videos.append(VideoFrames(video, label, split, dataset, tuple(s.path for s in kept)))
    return videos


# -- clip geometry ---------------------------------------------------------------------------


def _check_geometry(frames: int, stride: int) -> None:
    if frames < 1 or stride < 1:
        raise ValueError(f"a clip needs frames >= 1 and stride >= 1, got {frames} and {stride}")


def clip_span(frames: int, stride: int) -> int:
    """How many consecutive video frames a clip of ``frames`` at ``stride`` covers."""
    _check_geometry(frames, stride)
    return (frames - 1) * stride + 1


def is_short(n_frames: int, frames: int, stride: int) -> bool:
    """Whether a video of ``n_frames`` is too short for one clip (its clips are padded)."""
    return n_frames < clip_span(frames, stride)


def clip_starts(n_frames: int, frames: int, stride: int, count: int) -> list[int]:
    """Evaluation clip starts: ``count`` evenly spaced from the first frame to the last start
    that fits (the first and last clips touch the video's ends), rounded, without duplicates,
    so fewer when the video has fewer possible starts. One clip is centred; a short video gets
    one clip at 0."""
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {n_frames}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    last = n_frames - clip_span(frames, stride)
    if last <= 0:
        return [0]
    if count == 1:
        return [last // 2]
    # round(i * last / (count - 1)) in integers, halves up
    return sorted({(2 * i * last + count - 1) // (2 * (count - 1)) for i in range(count)})


def random_start(n_frames: int, frames: int, stride: int, rng: random.Random) -> int:
    """A training clip start drawn uniformly among those that fit (0 for a short video)."""
    return rng.randint(0, max(0, n_frames - clip_span(frames, stride)))


def clip_indices(
    start: int, frames: int, stride: int, n_frames: int
) -> tuple[list[int], list[bool]]:
    """Frame indices of the clip at ``start`` and which of them are padding.

    Indices ``start + k * stride`` past the video's end are replaced by looping back over the
    clip's real frames (``0 2 4 0 2 4``; see the module docstring)."""
    _check_geometry(frames, stride)
    if not 0 <= start < n_frames:
        raise ValueError(f"clip start {start} is outside a video of {n_frames} frames")
    real = [i for i in range(start, n_frames, stride)][:frames]
    indices = [real[k % len(real)] for k in range(frames)]
    padded = [k >= len(real) for k in range(frames)]
    return indices, padded


# -- dataset ---------------------------------------------------------------------------------


class ClipDataset(Dataset):
    """Clips of ``videos`` as items ``{"image": (T, 3, S, S), "label", "index", "video"}``.

    ``video`` indexes ``self.videos``; ``index`` is the item. Training (``train=True``): one
    item per video, its clip start drawn anew each epoch from ``(seed, epoch, index)``; the
    epoch comes with the key (``dataset[(epoch, i)]``, as :class:`ClipEpochSampler` yields it,
    which also works in DataLoader workers) or else from :meth:`set_epoch`. Evaluation: one
    item per (video, clip) pair, clips from :func:`clip_starts`.

    ``transform`` maps a list of PIL frames to a ``(T, 3, S, S)`` tensor
    (:func:`~deepfake_detect.data.transforms.build_clip_transform`). A frame that cannot be
    read makes the item ``{"error", "path", "index", "video"}``, which
    :func:`~deepfake_detect.data.datasets.collate_skipping` drops and reports.
    """

    def __init__(
        self,
        videos: Sequence[VideoFrames],
        transform: Callable[[list[Any]], torch.Tensor],
        frames: int = DEFAULT_FRAMES,
        stride: int = DEFAULT_STRIDE,
        train: bool = False,
        eval_clips: int = DEFAULT_EVAL_CLIPS,
        seed: int = 0,
    ) -> None:
        _check_geometry(frames, stride)
        if eval_clips < 1:
            raise ValueError(f"eval_clips must be >= 1, got {eval_clips}")
        empty = [v.video for v in videos if not v.frames]
        if empty:
            raise DataError(f"video {empty[0]} has no frames: a clip needs at least one")
        self.videos = list(videos)
        self.transform = transform
        self.frames, self.stride = frames, stride
        self.train, self.eval_clips, self.seed = train, eval_clips, seed
        self.epoch = 0
        # evaluation items: (video index, clip start)
        self.items: list[tuple[int, int]] = (
            []
            if train
            else [
                (v, start)
                for v, video in enumerate(self.videos)
                for start in clip_starts(len(video), frames, stride, eval_clips)
            ]
        )

    def __len__(self) -> int:
        return len(self.videos) if self.train else len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer keys (in the process that calls it)."""
        self.epoch = epoch

    @property
    def short_videos(self) -> int:
        """Videos with fewer frames than a clip spans: their clips are padded by repetition."""
        return sum(is_short(len(v), self.frames, self.stride) for v in self.videos)

    @property
    def video_ids(self) -> list[str]:
        """Video id of each ``batch["video"]`` value."""
        return [v.video for v in self.videos]

    def clip(self, index: int, epoch: int | None = None) -> tuple[int, list[int], list[bool]]:
        """``(video index, frame indices, padded)`` of item ``index`` (in ``epoch`` if training)."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip item {index} out of range for {len(self)} items")
        if self.train:
            epoch = self.epoch if epoch is None else epoch
            rng = random.Random(f"{self.seed}/{epoch}/{index}")
            v = index
            start = random_start(len(self.videos[v]), self.frames, self.stride, rng)
        else:
            v, start = self.items[index]
        indices, padded = clip_indices(start, self.frames, self.stride, len(self.videos[v]))
        return v, indices, padded

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        v, indices, _ = self.clip(int(index), epoch)
        video = self.videos[v]
        loaded = {}
        for i in dict.fromkeys(indices):  # each distinct frame once, also when padded
            try:
                loaded[i] = load_rgb(video.frames[i])
            except ImageLoadError as e:
                return {"error": e.reason, "path": str(video.frames[i]), "index": index, "video": v}
        image = self.transform([loaded[i] for i in indices])
        return {"image": image, "label": video.label, "index": index, "video": v}


class ClipEpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys from an epoch sampler of
    :mod:`~deepfake_detect.data.samplers`, so that training clips depend on the epoch also in
    DataLoader worker processes (which hold their own copy of the dataset).

    Epochs are counted like those samplers count them: Lightning's ``set_epoch`` before each
    epoch, else each new iteration is the next epoch.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch: int | None = None
        self._next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self._next if self.epoch is None else self.epoch
        self._next, self.epoch = epoch + 1, None
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        for index in self.sampler:
            yield (epoch, index)


def video_ids_of(dataset: ClipDataset) -> list[str]:
    """The video id of each ``batch["video"]`` value of a loader over ``dataset``."""
    return dataset.video_ids


def average_by_video(
    scores: torch.Tensor, videos: torch.Tensor, num_videos: int
) -> torch.Tensor:
    """Mean of the clip ``scores`` of each video (``videos`` = ``batch["video"]`` values), as
    a float tensor of ``num_videos``; NaN for a video none of whose clips was scored."""
    scores = scores.detach().float().reshape(-1)
    videos = videos.reshape(-1).long()
    if scores.numel() != videos.numel():
        raise ValueError(f"{scores.numel()} scores for {videos.numel()} video indices")
    total = torch.zeros(num_videos, dtype=torch.float64).index_add_(0, videos, scores.double())
    count = torch.zeros(num_videos, dtype=torch.float64).index_add_(
        0, videos, torch.ones_like(scores, dtype=torch.float64)
    )
    return (total / count).float()  # 0 / 0 = NaN for unscored videos


# -- inputs ----------------------------------------------------------------------------------


def read_training_pairs(csv_path: str | Path) -> list[Sample]:
    """The frames of the videos in a ``training_pairs.csv`` (one row per video folder).

    Header ``video_path,label`` (or ``folder``, ``video_folder``, ``video_dir``, ``frames_dir``,
    ``dir``, ``video`` for the folder column; ``path,label`` works too, as does no header at
    all when the first line already is ``<folder>,<label>``); other columns of a manifest
    (``split``, ``video``) are honoured. Folders are taken relative to the CSV's folder; each
    folder's images are the frames of one video; labels are 0/1 or names such as REAL/FAKE. A
    missing or empty folder is a :class:`DataError` naming it and the line.
    """
    path = Path(csv_path).expanduser()
    if path.suffix.lower() != ".csv":
        raise DataError(f"{path} is not a .csv file: give the training_pairs.csv manifest")
    found = scan([path])
    log_discovery(found)
    return found.samples


def frames_folder_samples(folder: str | Path, label: int | None = None) -> list[Sample]:
    """The images directly in ``folder`` as the frames of one video (``predict --video-dir``).

    The video id and dataset are the folder's name; ``label`` None (unknown) is stored as -1.
    """
    folder = Path(folder).expanduser()
    if label not in (None, 0, 1):
        raise ValueError(f"label must be 0 (real), 1 (fake) or None, not {label!r}")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"video folder {folder} {what}: give a folder of one video's frames")
    images = sorted(
        p for p in folder.iterdir()
        if not p.name.startswith(".") and is_image_file(p.name) and p.is_file()
    )
    if not images:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"video folder {folder} holds no images (extensions {exts}): give a folder of the "
            "video's frames or face crops (deepfake-detect prepare cuts them from a video)"
        )
    name = Path(os.path.abspath(folder)).name or "video"  # as given, not symlink-resolved
    samples = []
    for path in images:
        m = _CROP_NAME.match(path.stem)
        frame = f"{name}/{int(m.group('frame'))}" if m else None
        samples.append(Sample(path, -1 if label is None else label, name, None, name, frame))
    return samples
