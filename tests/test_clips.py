"""Clip data for video-level detectors: frame order, clip geometry, padding, augmentation,
training_pairs.csv, and ClipDataModule end to end on tiny generated frame folders."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detect.config.schema import AugmentConfig, DataConfig
from deepfake_detect.data.clip_datamodule import ClipDataModule
from deepfake_detect.data.video_clips import (
    ClipDataset,
    ClipEpochSampler,
    VideoFrames,
    average_by_video,
    clip_indices,
    clip_starts,
    frames_folder_samples,
    group_frames,
    is_short,
    read_training_pairs,
    sequence_settings,
)
from deepfake_detect.data.datasets import collate_skipping
from deepfake_detect.data.samplers import EpochRandomSampler
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.sources import scan
from deepfake_detect.data.transforms import build_clip_transform, build_transform
from deepfake_detect.errors import ConfigError, DataError

SIZE = 16
SEQ = {"frames": 4, "stride": 2, "eval_clips": 3}
PRE = {"input_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "sequence": SEQ}


def frame_png(path: Path, value: int, size: int = SIZE, noise: int = 0) -> Path:
    """A flat grey frame of ``value`` (so clips reveal which frames they hold), with an
    asymmetric dark corner so that flips and rotations show."""
    img = np.full((size, size, 3), value, np.uint8)
    img[: size // 4, : size // 4] = 0
    if noise:
        rng = np.random.default_rng(value)
        img = (img.astype(int) + rng.integers(-noise, noise + 1, img.shape)).clip(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


def frame_values(clip: torch.Tensor) -> list[int]:
    """The grey value of each frame of an un-augmented clip (bottom-right pixel, un-normalised)."""
    return [round(float((clip[t, 0, -1, -1] * 0.5 + 0.5) * 255)) for t in range(clip.shape[0])]


def fake_video(n: int, label: int = 0, name: str = "v") -> VideoFrames:
    return VideoFrames(name, label, "train", "d", tuple(Path(f"{name}/{i}.png") for i in range(n)))


# -- order and one face per frame ------------------------------------------------------------


def test_frames_are_ordered_by_number_not_name(tmp_path):
    root = tmp_path / "ds"
    for n in (10, 2, 1, 33):
        frame_png(root / "real" / "clipA" / f"frame_{n}.png", n)  # per-video folder
        frame_png(root / "fake" / f"vidB_frame_{n}.png", n)  # flat <video>_frame_<n>
    videos = {v.video: v for v in group_frames(scan([root]).samples)}
    assert set(videos) == {"real/clipA", "fake/vidB"}
    for v in videos.values():
        assert [p.stem.rsplit("_", 1)[-1] for p in v.frames] == ["1", "2", "10", "33"]
    assert videos["real/clipA"].label == 0 and videos["fake/vidB"].label == 1


def test_sample_frame_wins_over_file_name_and_unnumbered_go_last():
    samples = [
        Sample(Path("x/b.png"), 1, "v", frame="v/7"),
        Sample(Path("x/zz.png"), 1, "v"),  # no number anywhere: after the numbered frames
        Sample(Path("x/c9.png"), 1, "v", frame="v/3"),
        Sample(Path("x/a.png"), 1, "v", frame="v/12"),
    ]
    (video,) = group_frames(samples)
    assert [p.name for p in video.frames] == ["c9.png", "b.png", "a.png", "zz.png"]


def test_prepare_manifest_with_several_faces_keeps_face_zero(tmp_path):
    out = tmp_path / "faces"
    rows = ["path,label,video,frame,face,split,status,reason"]
    for frame in (0, 5, 10, 15):
        for face in (1, 0):  # face 1 listed first: the choice must not depend on row order
            rel = f"fake/vid/{frame:05d}_{face}.png"
            frame_png(out / rel, 100 + face * 50 + frame)
            rows.append(f"{rel},fake,vid,{frame},{face},,ok,")
    rows.append(",fake,vid,20,,,no_face,no face detected")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    (video,) = group_frames(scan([out / "manifest.csv"]).samples)
    names = [p.name for p in video.frames]
    assert names == ["00000_0.png", "00005_0.png", "00010_0.png", "00015_0.png"]
    # the same crops in a dataset folder (no manifest): the file names give the frame
    (ds,) = group_frames(scan([out]).samples)
    assert [p.name for p in ds.frames] == [p.name for p in video.frames]


# -- clip geometry ---------------------------------------------------------------------------


def test_eval_starts_evenly_spaced_and_capped():
    # span of 10 frames at stride 3 is 28: last start 100 - 28 = 72
    assert clip_starts(100, 10, 3, 4) == [0, 24, 48, 72]
    assert clip_starts(100, 10, 3, 1) == [36]  # one clip: the middle
    assert clip_starts(30, 10, 3, 4) == [0, 1, 2]  # only 3 starts fit: no duplicates
    assert clip_starts(28, 10, 3, 4) == [0]  # exactly one clip
    assert clip_starts(5, 10, 3, 4) == [0]  # short
    starts = clip_starts(1000, 10, 3, 7)
    assert len(starts) == 7 and starts[-1] + 27 == 999
    assert max(np.diff(starts)) - min(np.diff(starts)) <= 1


def test_short_video_is_padded_by_looping_back():
    indices, padded = clip_indices(0, 6, 2, 5)
    assert indices == [0, 2, 4, 0, 2, 4]
    assert padded == [False, False, False, True, True, True]
    assert clip_indices(0, 3, 3, 1) == ([0, 0, 0], [False, True, True])
    assert clip_indices(4, 4, 2, 20) == ([4, 6, 8, 10], [False] * 4)
    assert is_short(27, 10, 3) and not is_short(28, 10, 3)
    with pytest.raises(ValueError, match="outside"):
        clip_indices(5, 4, 2, 5)
    ds = ClipDataset(
        [fake_video(5), fake_video(28, name="w"), fake_video(3, name="u")], lambda f: f, 10, 3
    )
    assert ds.short_videos == 2
    assert len(ds) == 3  # one clip for each (two short, one exact fit)


def test_training_clip_changes_per_epoch_and_is_reproducible():
    videos = [fake_video(200, name=f"v{i}") for i in range(3)]
    ds = ClipDataset(videos, lambda f: f, 4, 2, train=True, seed=7)
    assert len(ds) == 3
    starts = [ds.clip(1, epoch)[1][0] for epoch in range(8)]
    assert len(set(starts)) > 1
    again = ClipDataset(videos, lambda f: f, 4, 2, train=True, seed=7)
    assert [again.clip(1, epoch)[1][0] for epoch in range(8)] == starts
    other = ClipDataset(videos, lambda f: f, 4, 2, train=True, seed=8)
    assert [other.clip(1, epoch)[1][0] for epoch in range(8)] != starts
    # set_epoch for plain keys; every start keeps the clip inside the video
    ds.set_epoch(3)
    assert ds.clip(1) == ds.clip(1, 3)
    assert all(0 <= ds.clip(i, e)[1][0] <= 200 - 7 for i in range(3) for e in range(20))


def test_epoch_sampler_yields_epoch_keys():
    sampler = ClipEpochSampler(EpochRandomSampler(list(range(5)), seed=1))
    first, second = list(sampler), list(sampler)
    assert {e for e, _ in first} == {0} and {e for e, _ in second} == {1}
    assert sorted(i for _, i in first) == list(range(5))
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same epoch gives the same order
    assert len(sampler) == 5


# -- clip transform --------------------------------------------------------------------------


def _array_pil(value: int) -> Image.Image:
    img = np.full((20, 20, 3), value, np.uint8)
    img[:5, :5] = 0
    img[15:, 10:] = 255 - value
    return Image.fromarray(img)


def test_eval_clip_transform_equals_the_image_transform():
    frames = [_array_pil(v) for v in (30, 90, 200)]
    clip = build_clip_transform(PRE)(frames)
    single = build_transform(PRE)
    assert clip.shape == (3, 3, SIZE, SIZE) and clip.dtype == torch.float32
    assert torch.allclose(clip, torch.stack([single(f) for f in frames]), atol=1e-6)


def test_augmentation_is_the_same_for_every_frame_of_a_clip():
    frames = [_array_pil(80), _array_pil(80), _array_pil(160)]
    plain = build_clip_transform(PRE)(frames)
    flipped = build_clip_transform(PRE, AugmentConfig(hflip=1.0))(frames)
    assert torch.equal(flipped, plain.flip(-1))  # every frame flipped, the third one too

    strong = AugmentConfig(
        hflip=0.5, rotation=30, color_jitter=(0.5, 0.5, 0.5, 0.1), brightness=1.0,
        contrast_limit=0.3, scale=(0.5, 1.0), random_erasing=0.5,
    )
    transform = build_clip_transform(PRE, strong)
    torch.manual_seed(0)
    outs = [transform(frames) for _ in range(6)]
    for out in outs:
        # frames that were identical stay identical: one random draw for the clip
        assert torch.equal(out[0], out[1])
    # yet the draws differ between clips, and the augmentation does change the frames
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert all(not torch.equal(o, plain) for o in outs)


# -- training_pairs.csv and predict folders ------------------------------------------------


def _video_folder(folder: Path, n: int, start_value: int = 10) -> Path:
    for i in range(n):
        frame_png(folder / f"{i + 1:04d}.png", start_value + 10 * i)
    return folder


def test_training_pairs_csv_round_trip(tmp_path):
    _video_folder(tmp_path / "videos" / "a", 3)
    _video_folder(tmp_path / "videos" / "b", 12)
    csv_path = tmp_path / "training_pairs.csv"
    csv_path.write_text("video_path,label\nvideos/a,REAL\nvideos/b,1\n")
    samples = read_training_pairs(csv_path)
    assert len(samples) == 15
    videos = {v.video: v for v in group_frames(samples)}
    assert set(videos) == {"real/videos/a", "fake/videos/b"}
    assert videos["real/videos/a"].label == 0 and videos["fake/videos/b"].label == 1
    names = [p.name for p in videos["fake/videos/b"].frames]
    assert names[:3] == ["0001.png", "0002.png", "0003.png"]
    # other headers and no header at all read the same
    for text in ("folder,label\nvideos/a,real\nvideos/b,FAKE\n", "videos/a,0\nvideos/b,fake\n"):
        csv_path.write_text(text)
        assert [s.path for s in read_training_pairs(csv_path)] == [s.path for s in samples]
    # a path,label manifest may mix image rows and folder rows
    frame_png(tmp_path / "still.png", 50)
    (tmp_path / "mixed.csv").write_text("path,label\nstill.png,0\nvideos/b,1\n")
    mixed = group_frames(scan([tmp_path / "mixed.csv"]).samples)
    assert sorted(len(v) for v in mixed) == [1, 12]


def test_training_pairs_missing_or_empty_folder_is_named(tmp_path):
    _video_folder(tmp_path / "a", 2)
    (tmp_path / "empty").mkdir()
    csv_path = tmp_path / "training_pairs.csv"
    csv_path.write_text("video_path,label\na,0\ngone/vid7,1\n")
    with pytest.raises(DataError, match=r"line 3: video folder .*gone/vid7 does not exist"):
        read_training_pairs(csv_path)
    csv_path.write_text("video_path,label\na,0\nempty,1\n")
    with pytest.raises(DataError, match=r"line 3: video folder .*empty holds no images"):
        read_training_pairs(csv_path)
    csv_path.write_text("video_path,label\na,0\na,1\n")
    with pytest.raises(DataError, match=r"line 3: folder .* already listed on line 2"):
        read_training_pairs(csv_path)
    csv_path.write_text("video_path,label\na,maybe\n")
    with pytest.raises(DataError, match=r"line 2: label 'maybe'"):
        read_training_pairs(csv_path)


def test_frames_folder_samples_is_one_video(tmp_path):
    folder = _video_folder(tmp_path / "my_clip", 5)
    (folder / "notes.txt").write_text("ignored")
    samples = frames_folder_samples(folder)
    assert len(samples) == 5 and {s.video for s in samples} == {"my_clip"}
    assert {s.label for s in samples} == {-1}
    assert {s.label for s in frames_folder_samples(folder, label=1)} == {1}
    (video,) = group_frames(samples)
    ds = ClipDataset([video], build_clip_transform(PRE), SEQ["frames"], SEQ["stride"])
    # 4 frames at stride 2 span 7 > 5: one clip, frames 0 2 4 and then 0 again
    assert len(ds) == 1 and ds.short_videos == 1
    item = ds[0]
    assert item["image"].shape == (4, 3, SIZE, SIZE) and item["label"] == -1
    assert frame_values(item["image"]) == [10, 30, 50, 10]
    with pytest.raises(DataError, match="video folder .*nowhere does not exist"):
        frames_folder_samples(tmp_path / "nowhere")
    (tmp_path / "blank").mkdir()
    with pytest.raises(DataError, match="blank holds no images"):
        frames_folder_samples(tmp_path / "blank")


# -- ClipDataModule --------------------------------------------------------------------------


def make_video_dataset(root: Path, per_class: int = 10) -> Path:
    """``root/{real,fake}/<video>/<n>.png`` with 3..12 frames per video (some short)."""
    rng = random.Random(0)
    for label in ("real", "fake"):
        for v in range(per_class):
            n = rng.randint(3, 12)
            for i in range(n):
                # frame i has grey value 10 + 10 i: clips show which frames they hold
                frame_png(root / label / f"{label}{v:02d}" / f"{i}.png", 10 + 10 * i)
    return root


def data_config(root: Path, **kw) -> DataConfig:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    kw.setdefault("verify", "none")
    return DataConfig(path=[root], augment={"hflip": 0.0}, **kw)


def test_clip_datamodule_grouped_stratified_split_and_batches(tmp_path):
    root = make_video_dataset(tmp_path / "ds")
    dm = ClipDataModule(data_config(root, val_fraction=0.15), PRE, seed=3)
    dm.setup()
    train, val = dm.videos("train"), dm.videos("val")
    assert len(train) + len(val) == 20 and not dm.videos("test")
    assert not {v.video for v in train} & {v.video for v in val}  # never split by frame
    # stratified by label: each class holds out about 15 % of its frames, in whole videos
    assert {v.label for v in val} == {0, 1}
    for label in (0, 1):
        held = sum(len(v) for v in val if v.label == label)
        total = held + sum(len(v) for v in train if v.label == label)
        assert abs(held / total - 0.15) < 12 / total  # within one video of the target
    for split, videos in (("train", train), ("val", val)):
        assert sum(len(v) for v in videos) == len(dm.samples(split))

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, SEQ["frames"], 3, SIZE, SIZE)
    assert batch["image"].dtype == torch.float32 and batch["skipped"] == []
    assert batch["video"].tolist() == batch["index"].tolist()  # training: one item per video
    assert [v.label for v in (train[i] for i in batch["video"].tolist())] == batch["label"].tolist()

    loader = dm.val_dataloader()
    dataset = loader.dataset
    expected = sum(len(clip_starts(len(v), 4, 2, 3)) for v in val)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(dataset) == expected
    for b in batches:
        for clip, v in zip(b["image"], b["video"].tolist()):
            values = frame_values(clip)
            n = len(dataset.videos[v])
            if n >= 7:  # a full clip: four frames two apart, in order
                assert np.diff(values).tolist() == [20, 20, 20]
            else:  # padded by looping back to the clip's first frame
                assert values[0] == 10 and values[-1] in (10, 30)
    summary = dm.summary()
    short = sum(len(v) < 7 for v in train + val)
    assert short > 0 and dm.short_videos() == short
    assert f"padded by repetition: {short}" in summary
    n = Counter(v.label for v in train)
    m = Counter(v.label for v in val)
    assert (
        f"videos: train {len(train)} ({n[0]} real, {n[1]} fake); "
        f"val {len(val)} ({m[0]} real, {m[1]} fake)"
    ) in summary

    w = dm.class_weights()  # counted in videos, not frames
    assert torch.isclose(w[0] / w[1], torch.tensor(n[1] / n[0]))


def test_clip_scores_average_per_video(tmp_path):
    root = make_video_dataset(tmp_path / "ds", per_class=3)
    dm = ClipDataModule(data_config(root, val_fraction=0.34), PRE)
    dm.setup()
    loader = dm.eval_dataloader(dm.samples("train") + dm.samples("val"), batch_size=5)
    scores, videos = [], []
    for b in loader:
        scores.append(b["image"].mean(dim=(1, 2, 3, 4)))
        videos.append(b["video"])
    ids = loader.dataset.video_ids
    per_video = average_by_video(torch.cat(scores), torch.cat(videos), len(ids))
    assert per_video.shape == (6,) and not per_video.isnan().any()
    assert sorted(ids) == sorted({s.video for s in dm.samples("train") + dm.samples("val")})
    # by hand for the first video
    mask = torch.cat(videos) == 0
    assert torch.isclose(per_video[0], torch.cat(scores)[mask].mean())
    assert average_by_video(torch.tensor([1.0]), torch.tensor([0]), 2)[1].isnan()


def test_unreadable_frame_skips_its_clip_without_crashing(tmp_path):
    root = make_video_dataset(tmp_path / "ds", per_class=4)
    broken = sorted((root / "fake" / "fake00").iterdir())[0]
    broken.write_bytes(b"\x89PNG broken")
    dm = ClipDataModule(data_config(root, val_fraction=0.3, batch_size=16), PRE)
    dm.setup()
    assert dm.skipped == []  # verify none: only loading finds it
    list(dm.train_dataloader())  # whichever clip it draws, training goes on
    everything = dm.samples("train") + dm.samples("val")
    loader = dm.eval_dataloader(everything, batch_size=16)
    batches = list(loader)
    skipped = [p for b in batches for p, _ in b["skipped"]]
    # the clips of that video that hold frame 0 (its first clip does) are skipped, the rest scored
    assert skipped and {Path(p) for p in skipped} == {broken}
    assert sum(len(b["label"]) for b in batches) + len(skipped) == len(loader.dataset)
    assert all(b["image"] is None or b["image"].shape[1:] == (4, 3, SIZE, SIZE) for b in batches)
    # with header verification the frame is left out at setup (and counted) instead
    dm = ClipDataModule(data_config(root, val_fraction=0.3, verify="header"), PRE)
    dm.setup()
    assert [Path(p) for p, _ in dm.skipped] == [broken]
    assert "skipped unreadable or missing images: 1" in dm.summary()
    assert all(broken not in v.frames for v in dm.all_videos())


def test_sequence_settings_defaults_and_errors():
    s = sequence_settings({})
    assert (s.frames, s.stride, s.eval_clips, s.span) == (10, 3, 4, 28)
    assert sequence_settings(PRE).frames == 4
    with pytest.raises(ConfigError, match=r"\['stride'\] = 0"):
        sequence_settings({"sequence": {"stride": 0}})


def test_collate_keeps_image_batches_as_they_were():
    items = [
        {"image": torch.zeros(3, 2, 2), "label": 1, "index": 0},
        {"error": "x", "path": "p", "index": 1},
    ]
    batch = collate_skipping(items)
    assert set(batch) == {"image", "label", "index", "skipped"}
    assert batch["image"].shape == (1, 3, 2, 2) and batch["skipped"] == [("p", "x")]
    clips = [{"image": torch.zeros(5, 3, 2, 2), "label": 0, "index": 4, "video": 2}]
    assert collate_skipping(clips)["video"].tolist() == [2]
    assert collate_skipping(clips)["image"].shape == (1, 5, 3, 2, 2)
