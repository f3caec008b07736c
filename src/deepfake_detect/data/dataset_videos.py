"""Raw videos in dataset folders: cut into face crops with ``prepare``'s pipeline, or refused.

Seed datasets often hold a few videos beside their face images (``train/real/real_002.mp4`` next
to ``train/real/real_001.jpg``). :func:`gather_samples` scans the data paths as
:func:`~deepfake_detect.data.sources.scan` does, runs the face pipeline on just those videos
into a cache folder per dataset folder (``prepare`` resumes: finished videos whose file and
settings are unchanged are reused), and returns their crops as samples with the video's label,
split, group (``fake/Deepfakes/000_003.mp4``: ``Deepfakes``) and a folder-rule video id
(``train/real/real_002``), so that grouped splits keep a video's crops together. Videos that give
no crop are returned with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from deepfake_detect.data.labels import label_name
from deepfake_detect.data.locations import as_location, names_shards
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.sources import Discovery, FoundVideo, scan
from deepfake_detect.errors import DataError
from deepfake_detect.outputs import inside, safe_name

if TYPE_CHECKING:
    from deepfake_detect.config.schema import PrepareConfig
    from deepfake_detect.data.faces.base import FaceDetector
    from deepfake_detect.data.media_inputs import MediaItem

log = logging.getLogger(__name__)

VideoPolicy = Literal["prepare", "refuse"]


@dataclass
class VideoCrops:
    """Tally of the videos in dataset folders that were cut into face crops."""

    videos: int = 0
    crops: int = 0
    failed: int = 0  # videos that gave no crop at all (unreadable, no face in any frame)
    frames_without_face: int = 0
    reused: int = 0  # videos whose crops came from the cache

    def line(self) -> str:
        without = (
            f", {self.frames_without_face} frames without a face" if self.frames_without_face else ""
        )
        return (
            f"videos cut into face crops: {self.videos} ({self.crops} crops, {self.failed} failed"
            f"{without})"
        )


@dataclass
class Gathered:
    """The samples of some data paths, videos included as face crops, and what was left out."""

    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (path, reason): missing files and videos without a crop
    found: Discovery  # what the folder scan saw (ignored files, manifest rows without a crop)
    videos: VideoCrops = field(default_factory=VideoCrops)
    # the split of each skipped input that had one: videos without a crop, files left out
    # when a shard dataset was written
    skipped_split: dict[str, str | None] = field(default_factory=dict)

    def left_out(self, chosen: Sequence[Sample], split: str) -> list[tuple[str, str]]:
        """The skipped inputs of the split(s) ``chosen`` is from (``split``: what was asked,
        ``all`` for every split); an input of no split counts only with ``all``."""
        splits = {s.split for s in chosen}
        return [(p, r) for p, r in self.skipped if p in self.skipped_split
                and (split == "all" or self.skipped_split[p] in splits)]


def faces_cache_dir(
    root: str | Path, faces_cache: str | Path | None = None, cache_root: str | Path | None = None
) -> Path:
    """Cache folder of the face crops of the videos in dataset folder ``root``:
    ``<faces_cache or cache_root/faces-cache>/<folder name>-<8 hex of sha1(absolute path)>``."""
    given = Path(root).expanduser()
    name = Path(os.path.abspath(given)).name or "dataset"
    digest = hashlib.sha1(str(given.resolve()).encode()).hexdigest()[:8]
    if faces_cache is not None:
        base = Path(faces_cache).expanduser()
    elif cache_root is not None:
        base = Path(cache_root).expanduser() / "faces-cache"
    else:
        raise DataError(
            f"dataset folder {root} holds videos, and there is nowhere to keep their face crops: "
            "set data.faces_cache (or give the experiment's output_dir as cache_root)"
        )
    return inside(base, safe_name(f"{name}-{digest}"))


def gather_samples(
    paths: Sequence[str | Path],
    *,
    videos: VideoPolicy = "prepare",
    prepare: PrepareConfig | None = None,
    faces_cache: str | Path | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
    face_detector: FaceDetector | None = None,
    group_depth: int | None = None,
    shard_cache: str | Path | None = None,
    what: str = "data.path",
) -> Gathered:
    """Every sample in ``paths`` (splits as given, None if none); videos in dataset folders are
    cut into face crops with ``prepare`` (``videos="prepare"``) or refused with an error saying
    what to run. ``face_detector`` replaces the one ``prepare`` would build (tests);
    ``group_depth``: how folders name groups (``data.group_depth``, see
    :func:`~deepfake_detect.data.sources.scan`). A shard dataset (``deepfake-detect shard``,
    a local folder or an object-store URI) gives the samples of its index, which read their
    images from its chunks; ``shard_cache``: where litdata copies a remote one's chunks (none:
    only local shard folders are read); ``what``: how errors name the paths."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    locations = [as_location(p, what) for p in paths]
    # shard datasets (deepfake-detect shard): their sample index, images read from the chunks
    shards = [p for p in locations if names_shards(p)]
    folders = [p for p in locations if p not in shards]
    found = scan(folders, videos=True, group_depth=group_depth) if folders else Discovery()
    gathered = Gathered(
        samples=list(found.samples), skipped=[(str(p), r) for p, r in found.missing], found=found
    )
    gathered.skipped_split = {str(v.path): v.split for v in found.videos}
    for location in shards:
        from deepfake_detect.data.shard_reader import shard_samples

        samples, left = shard_samples(location, cache_dir=shard_cache, what=what)
        log.info("shard dataset %s: %d images", location, len(samples))
        gathered.samples += samples
        gathered.skipped += [(p, r) for p, r, _ in left]
        gathered.skipped_split.update({p: split for p, _, split in left})
    by_root: dict[Path, list[FoundVideo]] = {}
    for video in found.videos:
        by_root.setdefault(video.root, []).append(video)
    if by_root and videos == "refuse":
        root, listed = next(iter(by_root.items()))
        raise DataError(_refusal(root, listed))
    for root, listed in by_root.items():
        cache = faces_cache_dir(root, faces_cache, cache_root)
        crops, failed = _cut_videos(
            root, listed, cache, prepare, progress, face_detector, gathered.videos
        )
        dataset = listed[0].dataset
        if not crops and not any(s.dataset == dataset for s in found.samples):
            path, reason = failed[0]
            raise DataError(
                f"dataset folder {root} holds no images, and none of its {len(listed)} videos "
                f"gave a face crop (e.g. {path}: {reason})"
            )
        gathered.samples += crops
        gathered.skipped += failed
    return gathered


def _refusal(root: Path, listed: list[FoundVideo]) -> str:
    shown = root if root.name not in ("", ".", "..") else Path(os.path.abspath(root))
    faces = f"{shown}_faces"
    return (
        f"dataset folder {root} holds {len(listed)} video file(s), e.g. {listed[0].path}, and "
        f"data.videos is 'refuse'. Cut their faces out first: deepfake-detect prepare {shown} "
        f"--out {faces}, then train on {faces} (data.path: {faces}); or set data.videos: prepare "
        "to have videos cut into face crops (and cached) automatically"
    )


def _media_item(video: FoundVideo) -> MediaItem:
    """The ``prepare`` item of a video; crops go to ``<cache>/[split/]<label>/<path in label
    folder>`` as ``deepfake-detect prepare`` would put them."""
    from deepfake_detect.data.media_inputs import MediaItem

    rel = video.path.relative_to(video.label_dir).with_suffix("").as_posix()
    if video.label_dir.name != label_name(video.label):
        rel = f"{video.label_dir.name}/{rel}"  # e.g. "original/": keep apart from "real/"
    # absolute: the cache is found again when the folder is given from another working directory
    return MediaItem(
        Path(os.path.abspath(video.path)), "video", rel, video.label, video.split, video.group
    )


def _cut_videos(
    root: Path,
    listed: list[FoundVideo],
    cache: Path,
    config: PrepareConfig | None,
    progress: bool,
    detector: FaceDetector | None,
    tally: VideoCrops,
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Run the face pipeline on the videos of one dataset folder; their crops as samples, and
    the videos that gave none with the reason."""
    from deepfake_detect.data.media_inputs import check_unique_videos
    from deepfake_detect.data.prepare import prepare_items

    items = [_media_item(v) for v in listed]
    check_unique_videos(items)
    report = prepare_items(
        items, cache, config, inputs=[root], progress=progress, detector=detector,
        description=f"face crops of videos in {root.name or root}",
    )
    for note in report.notes[:5]:
        log.info("%s", note)
    rows: dict[str, list[dict]] = {}
    with open(report.manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["source"], []).append(row)
    samples: list[Sample] = []
    failed: list[tuple[str, str]] = []
    for video, item in zip(listed, items):
        mine = rows.get(str(item.path), [])
        ok = [r for r in mine if r["status"] == "ok"]
        no_face = sum(r["status"] == "no_face" for r in mine)
        tally.videos += 1
        tally.crops += len(ok)
        tally.frames_without_face += no_face
        for r in ok:
            frame = f"{video.video}/{int(r['frame'])}"
            samples.append(Sample(
                cache / r["path"], video.label, video.video, video.split, video.dataset, frame,
                video.group,
            ))
        if not ok:
            errors = [r for r in mine if r["status"] not in ("ok", "no_face")]
            if errors:
                reason = errors[0]["reason"] or errors[0]["status"]
            elif no_face:
                reason = f"no face found in any of its {no_face} sampled frames"
            else:
                reason = "no frames could be read"
            tally.failed += 1
            failed.append((str(video.path), f"video gave no face crop: {reason}"))
    tally.reused += report.reused
    return samples, failed
