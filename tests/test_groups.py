"""Sample groups (manipulation method / generator / source) and held-out groups in training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BrightSquare, square_frames, tiny_config, write_face_like, write_video
from PIL import Image

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import DataConfig, PrepareConfig
from deepfake_detect.data import FaceDataModule
from deepfake_detect.data.dataset_videos import gather_samples
from deepfake_detect.data.media_inputs import find_media
from deepfake_detect.data.prepare import COLUMNS, prepare
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.sources import scan
from deepfake_detect.data.splits import hold_out
from deepfake_detect.errors import ConfigError

torch.set_num_threads(1)
PRE = {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PREP = PrepareConfig.model_validate(
    {"frames": {"count": 3}, "detect": {"batch_size": 4}, "crop": {"size": 32}}
)
METHODS = ("Deepfakes", "Face2Face", "NeuralTextures")


def ffpp(root: Path, reals: int = 6, per_method: int = 3, frames: int = 2, size: int = 16) -> Path:
    """A FaceForensics++-like tree: ``real/<video>/NNNN.png``, ``fake/<method>/<video>/NNNN.png``
    (``Deepfakes`` is also a fake label name: a method here, below the label folder)."""
    rng = np.random.default_rng(0)
    for v in range(reals):
        for f in range(frames):
            write_face_like(root / "real" / f"{v:03d}" / f"{f:04d}.png", 0, rng, size)
    for method in METHODS:
        for v in range(per_method):
            for f in range(frames):
                path = root / "fake" / method / f"{v:03d}_{v + 10:03d}" / f"{f:04d}.png"
                write_face_like(path, 1, rng, size)
    return root


def tiny_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path)


# --- folder groups ------------------------------------------------------------------------------


def test_folder_groups_are_recognised_and_video_ids_unchanged(tmp_path: Path) -> None:
    root = ffpp(tmp_path / "ff")
    found = scan([root]).samples
    assert len(found) == 6 * 2 + 3 * 3 * 2
    assert {s.group for s in found if s.label == 0} == {None}
    assert {s.group for s in found if s.label == 1} == set(METHODS)
    by_video = {s.video: s.group for s in found}
    assert by_video["real/000"] is None
    assert by_video["fake/Deepfakes/000_010"] == "Deepfakes"
    assert by_video["fake/NeuralTextures/002_012"] == "NeuralTextures"
    # the frame numbers come from the file names, as ever
    assert {s.frame for s in found if s.video == "real/001"} == {"real/001/0", "real/001/1"}

    # data.group_depth 1 makes every folder under a label folder a group (the reals' video
    # folders too); 0 turns folder groups off; the video ids and frames never change
    depth1 = scan([root], group_depth=1).samples
    depth0 = scan([root], group_depth=0).samples
    assert [(s.path, s.group) for s in depth1 if s.label == 1] == [
        (s.path, s.group) for s in found if s.label == 1
    ]
    assert {s.group for s in depth1 if s.video == "real/003"} == {"003"}
    assert {s.group for s in depth0} == {None}
    for other in (depth1, depth0):
        assert [(s.video, s.frame) for s in other] == [(s.video, s.frame) for s in found]


def test_a_folder_of_one_videos_frames_is_a_video(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for f in range(3):
        tiny_png(root / "real" / "clip7" / f"{f:04d}.png")  # numbered frames
        tiny_png(root / "real" / "clip8" / f"clip8_frame_{f}.png")  # one video's named frames
        tiny_png(root / "fake" / "FaceSwap" / f"a_frame_{f}.png")  # frames of two videos
        tiny_png(root / "fake" / "FaceSwap" / f"b-{f}.png")
        tiny_png(root / "fake" / f"flat_frame_{f}.png")  # right in the label folder
    found = {(s.video, s.group) for s in scan([root]).samples}
    assert found == {
        ("real/clip7", None), ("real/clip8", None),
        ("fake/FaceSwap/a", "FaceSwap"), ("fake/FaceSwap/b", "FaceSwap"), ("fake/flat", None),
    }
    # without folder groups the FaceSwap folder is one video, as before groups existed
    plain = {(s.video, s.group) for s in scan([root], group_depth=0).samples}
    assert ("fake/FaceSwap", None) in plain


def test_two_level_groups_and_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    tiny_png(root / "train" / "real" / "r1" / "0001.png")
    tiny_png(root / "train" / "fake" / "c23" / "Deepfakes" / "v1" / "0001.png")
    tiny_png(root / "train" / "fake" / "c23" / "Face2Face" / "v1" / "0001.png")
    found = {(s.video, s.group) for s in scan([root], group_depth=2).samples}
    assert found == {
        ("train/real/r1", None),
        ("train/fake/c23/Deepfakes/v1", "c23/Deepfakes"),
        ("train/fake/c23/Face2Face/v1", "c23/Face2Face"),
    }


def test_video_files_in_a_method_folder_are_in_its_group(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for v in range(2):
        for f in range(2):
            tiny_png(root / "real" / f"r{v}" / f"{f:04d}.png")
    write_video(root / "fake" / "Deepfakes" / "000_003.mp4", square_frames(10))
    found = scan([root], videos=True)
    assert [(v.video, v.group) for v in found.videos] == [("fake/Deepfakes/000_003", "Deepfakes")]
    # cut into crops, the video's samples carry the group
    gathered = gather_samples(
        [root], prepare=PREP, faces_cache=tmp_path / "cache", progress=False,
        face_detector=BrightSquare(),
    )
    crops = [s for s in gathered.samples if s.label == 1]
    assert len(crops) == 3
    assert {(s.video, s.group) for s in crops} == {("fake/Deepfakes/000_003", "Deepfakes")}
    assert {s.group for s in gathered.samples if s.label == 0} == {None}


# --- manifests ----------------------------------------------------------------------------------


def test_csv_group_column(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png", "clip/0001.png", "clip/0002.png"):
        tiny_png(tmp_path / name)
    (tmp_path / "list.csv").write_text(
        "path,label,group\na.png,fake,Deepfakes\nb.png,fake,\nc.png,real,youtube\n"
        "clip,fake,FaceSwap\n"
    )
    groups = {s.path.name: s.group for s in scan([tmp_path / "list.csv"]).samples}
    assert groups == {
        "a.png": "Deepfakes", "b.png": None, "c.png": "youtube",
        "0001.png": "FaceSwap", "0002.png": "FaceSwap",
    }


def items_as_cells(items: set[tuple[str, str | None]]) -> set[tuple[str, str]]:
    return {(video, group or "") for video, group in items}


def test_prepare_manifest_keeps_the_methods(tmp_path: Path) -> None:
    media = tmp_path / "media"
    write_video(media / "real" / "000.mp4", square_frames(10))
    write_video(media / "fake" / "Deepfakes" / "000_003.mp4", square_frames(10))
    write_video(media / "fake" / "Face2Face" / "000_003.mp4", square_frames(10))
    items = {(i.video, i.group) for i in find_media([media]).items}
    assert items == {("000", None), ("Deepfakes/000_003", "Deepfakes"),
                     ("Face2Face/000_003", "Face2Face")}

    out = tmp_path / "faces"
    prepare([media], out, PREP, progress=False, detector=BrightSquare())
    assert COLUMNS[-1] == "group"
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["video"], r["group"]) for r in rows} == items_as_cells(items)
    # read back as a manifest, and as a folder of crops: the methods are the groups either way
    for path in (out / "manifest.csv", out):
        found = scan([path]).samples
        assert {s.group for s in found if s.label == 1} == {"Deepfakes", "Face2Face"}
        assert {s.group for s in found if s.label == 0} == {None}


# --- held-out groups ----------------------------------------------------------------------------


def module(root: Path, **data) -> FaceDataModule:
    data.setdefault("num_workers", 0)
    data.setdefault("batch_size", 4)
    return FaceDataModule(DataConfig(path=[root], **data), PRE, progress=False)


@pytest.mark.parametrize("test_fraction", [0.25, 0.0])
def test_heldout_groups_stay_out_of_train_and_val(tmp_path: Path, test_fraction: float) -> None:
    root = ffpp(tmp_path / "ff", reals=8)
    dm = module(root, holdout_groups=["NeuralTextures"], val_fraction=0.25,
                test_fraction=test_fraction)
    dm.setup("fit")
    held_videos = {s.video for s in scan([root]).samples if s.group == "NeuralTextures"}
    assert len(held_videos) == 3
    for split in ("train", "val", "test"):
        assert not held_videos & {s.video for s in dm.samples(split)}, split
        assert "NeuralTextures" not in {s.group for s in dm.samples(split)}
    reals_from = "test" if test_fraction else "val"
    assert dm.heldout_reals_from == reals_from
    heldout = dm.samples("heldout")
    fakes = [s for s in heldout if s.label == 1]
    reals = [s for s in heldout if s.label == 0]
    assert {s.video for s in fakes} == held_videos and len(fakes) == 3 * 2
    expected = [s for s in dm.samples(reals_from) if s.label == 0]
    assert reals == expected and reals
    assert dm.heldout_counts() == {"real": len(reals), "fake": 6}
    assert "held-out groups (NeuralTextures): 6 fake" in dm.summary()
    # the other methods still train
    assert {s.group for s in dm.samples("train") if s.label == 1} == {"Deepfakes", "Face2Face"}


def test_hold_out_takes_whole_videos() -> None:
    samples = [
        Sample(Path("a1.png"), 1, "v1", group="NeuralTextures"),
        Sample(Path("a2.png"), 1, "v1"),  # same video, no group cell: held out too
        Sample(Path("b.png"), 1, "v2", group="Deepfakes"),
        Sample(Path("c.png"), 1, "v1", dataset="other"),  # same id in another dataset: kept
    ]
    kept, held = hold_out(samples, ["NeuralTextures"])
    assert [s.path.name for s in held] == ["a1.png", "a2.png"]
    assert [s.path.name for s in kept] == ["b.png", "c.png"]


def test_unknown_heldout_group_suggests_the_closest(tmp_path: Path) -> None:
    root = ffpp(tmp_path / "ff")
    with pytest.raises(ConfigError, match=r"did you mean 'NeuralTextures'\?.*Deepfakes"):
        module(root, holdout_groups=["neuraltexture"]).setup("fit")
    flat = tmp_path / "flat"
    for label in ("real", "fake"):
        for v in range(2):
            tiny_png(flat / label / f"v{v}_frame_0.png")
    with pytest.raises(ConfigError, match="no sample has a group"):
        module(flat, holdout_groups=["NeuralTextures"]).setup("fit")


# --- training -----------------------------------------------------------------------------------


def test_training_reports_test_and_heldout_apart(tmp_path: Path) -> None:
    from deepfake_detect.training.train import train

    root = ffpp(tmp_path / "ff", reals=8)
    base = tiny_config(root, tmp_path / "runs", epochs=1)
    base["data"].update(holdout_groups=["NeuralTextures"], test_fraction=0.25, val_fraction=0.25)
    base["eval"] = {"plots": False}
    result = train(load_config(base=base), out=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    test, held = report["test"], report["heldout"]
    assert held["groups"] == ["NeuralTextures"] and held["reals_from"] == "test"
    test_reals = test["frame"]["n_real"]
    assert held["class_counts"] == {"real": test_reals, "fake": 6}
    assert held["frame"]["n_fake"] == 6 and held["frame"]["n_real"] == test_reals
    assert held["video"]["n_videos"] == 3 + test_reals // 2
    # no held-out image was trained on, validated on or tested as in-distribution
    counts = report["class_counts"]
    assert sum(per["fake"] for per in counts.values()) == 2 * 3 * 2
    assert (result.run_dir / "heldout" / "metrics.json").is_file()
    assert result.heldout_metrics is not None and result.test_metrics is not None


def test_training_runs_the_recipes_robustness_sweep_on_the_test_split(tmp_path: Path) -> None:
    from deepfake_detect.training.train import train

    root = ffpp(tmp_path / "ff", reals=8)
    base = tiny_config(root, tmp_path / "runs", epochs=1)
    base["data"].update(test_fraction=0.25, val_fraction=0.25)
    base["eval"] = {"plots": False, "perturb": ["jpeg:40"], "bootstrap": 20}
    result = train(load_config(base=base), out=tmp_path / "run")
    rows = (result.run_dir / "test" / "robustness" / "robustness.csv").read_text().splitlines()
    assert rows[0].startswith("perturbation,severity,level") and len(rows) == 1 + 2 * 2
    # a bad spec is refused before any training
    base["eval"]["perturb"] = ["jpg:40"]
    with pytest.raises(ConfigError, match="jpeg"):
        train(load_config(base=base), out=tmp_path / "run2")
    assert not (tmp_path / "run2" / "checkpoints").exists()
