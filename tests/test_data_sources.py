"""Dataset discovery (folders, CSV), label names, video ids and splits."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from deepfake_detect.data.labels import SPLIT_NAMES, parse_label, parse_split
from deepfake_detect.data.samples import FAKE, REAL, Sample
from deepfake_detect.data.sources import discover, scan
from deepfake_detect.data.splits import assign_splits, check_splits, class_counts
from deepfake_detect.errors import DataError


def img(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (120, 60, 30)).save(path)
    return path


def video_frames(folder: Path, n: int = 3) -> None:
    for i in range(n):
        img(folder / f"{i:04d}.png")


# -- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["real", "REAL", "Original", "originals", "pristine", "Genuine", "authentic",
             "BonaFide", "live", "0", " real "],
)
def test_real_synonyms(name):
    assert parse_label(name) == REAL


@pytest.mark.parametrize(
    "name", ["fake", "Fakes", "MANIPULATED", "deepfake", "DeepFakes", "forged", "forgery",
             "synthetic", "Spoof", "attack", "1"],
)
def test_fake_synonyms(name):
    assert parse_label(name) == FAKE


@pytest.mark.parametrize("name", ["unknown", "", "2", "reals", "train"])
def test_unknown_labels(name):
    assert parse_label(name) is None


def test_split_names():
    assert {SPLIT_NAMES[k] for k in SPLIT_NAMES} == {"train", "val", "test"}
    for name, canon in [("Training", "train"), ("VALID", "val"), ("validation", "val"),
                        ("dev", "val"), ("Testing", "test"), ("real", None)]:
        assert parse_split(name) == canon


# -- folder layouts ----------------------------------------------------------------------


def test_split_folders_with_synonyms_any_case(tmp_path):
    root = tmp_path / "ffpp"
    img(root / "Training" / "Original" / "a.png")
    img(root / "Training" / "DeepFakes" / "b.jpg")
    img(root / "VALID" / "real" / "c.PNG")
    img(root / "valid" / "FAKE" / "d.jpeg")
    img(root / "test" / "pristine" / "e.bmp")
    img(root / "test" / "spoof" / "f.webp")
    samples = discover([root])
    got = {(s.path.name, s.label, s.split) for s in samples}
    assert got == {
        ("a.png", REAL, "train"), ("b.jpg", FAKE, "train"), ("c.PNG", REAL, "val"),
        ("d.jpeg", FAKE, "val"), ("e.bmp", REAL, "test"), ("f.webp", FAKE, "test"),
    }
    assert {s.dataset for s in samples} == {"ffpp"}
    assert samples == sorted(samples, key=lambda s: str(s.path))


def test_label_folders_only_have_no_split(tmp_path):
    img(tmp_path / "ds" / "real" / "a.png")
    img(tmp_path / "ds" / "fake" / "b.png")
    found = scan([tmp_path / "ds"])
    assert [s.split for s in found.samples] == [None, None]
    assert found.layouts == {"ds": "label folders"}


def test_all_extensions_any_case_and_non_images_counted(tmp_path):
    root = tmp_path / "ds"
    for i, ext in enumerate(["jpg", "JPEG", "png", "bmp", "webp", "tif", "TIFF", "gif"]):
        img(root / "fake" / f"x{i}.{ext}")
    img(root / "real" / "r.png")
    (root / "fake" / "notes.txt").write_text("hi")
    (root / "fake" / "clip.mp4").write_bytes(b"\0" * 10)
    (root / "fake" / ".DS_Store").write_bytes(b"\0")
    found = scan([root])
    assert len(found.samples) == 9
    assert sorted(p.name for p in found.ignored) == [".DS_Store", "clip.mp4", "notes.txt"]


def test_recursive_search_and_subfolder_video_ids(tmp_path):
    root = tmp_path / "ds"
    video_frames(root / "train" / "fake" / "Deepfakes" / "v1")
    video_frames(root / "train" / "fake" / "Face2Face" / "v1")
    video_frames(root / "train" / "real" / "v1")
    samples = discover([root])
    videos = Counter(s.video for s in samples)
    assert videos == {
        "train/fake/Deepfakes/v1": 3,
        "train/fake/Face2Face/v1": 3,
        "train/real/v1": 3,
    }


def test_flat_frame_name_video_ids(tmp_path):
    root = tmp_path / "ds"
    for i in range(3):
        img(root / "fake" / f"clipA_frame_{i}.png")
        img(root / "fake" / f"clipB-{i:03d}.jpg")
        img(root / "fake" / f"clipC_f{i}.png")
        img(root / "real" / f"clipA_frame_{i}.png")  # same name under real: another video
    img(root / "real" / "portrait.png")
    img(root / "real" / "frame_7.png")  # no video prefix: its own video
    videos = {(s.path.name, s.video) for s in discover([root])}
    assert ("clipA_frame_1.png", "fake/clipA") in videos
    assert ("clipB-002.jpg", "fake/clipB") in videos
    assert ("clipC_f0.png", "fake/clipC") in videos
    assert ("clipA_frame_2.png", "real/clipA") in videos
    assert ("portrait.png", "real/portrait") in videos
    assert ("frame_7.png", "real/frame_7") in videos
    by_video = Counter(v for _, v in videos)
    assert by_video["fake/clipA"] == by_video["real/clipA"] == 3


def test_same_video_name_in_two_splits_stays_distinct(tmp_path):
    root = tmp_path / "ds"
    video_frames(root / "train" / "fake" / "v1", 2)
    video_frames(root / "test" / "fake" / "v1", 2)
    videos = {s.video for s in discover([root])}
    assert videos == {"train/fake/v1", "test/fake/v1"}


def test_duplicate_dataset_names_are_disambiguated(tmp_path):
    for parent in ("a", "b"):
        img(tmp_path / parent / "ds" / "real" / "x.png")
        img(tmp_path / parent / "ds" / "fake" / "y.png")
    found = scan([tmp_path / "a" / "ds", tmp_path / "b" / "ds"])
    assert [s.dataset for s in found.samples] == ["ds", "ds", "ds-2", "ds-2"]


def test_same_path_twice_is_an_error(tmp_path):
    img(tmp_path / "ds" / "real" / "x.png")
    with pytest.raises(DataError, match="given twice"):
        discover([tmp_path / "ds", tmp_path / "ds" / "."])


# -- folder errors -----------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        discover([tmp_path / "nope"])
    assert str(tmp_path / "nope") in str(e.value)
    assert "label folders" in str(e.value)  # the accepted layouts are described


def test_folder_without_label_folders_lists_what_it_found(tmp_path):
    root = tmp_path / "ds"
    img(root / "images" / "a.png")
    img(root / "b.png")
    with pytest.raises(DataError) as e:
        discover([root])
    msg = str(e.value)
    assert "no label or split folders" in msg and "images/" in msg and "b.png" in msg
    assert "pristine" in msg  # accepted names


def test_split_folder_without_label_folders(tmp_path):
    img(tmp_path / "ds" / "train" / "stuff" / "a.png")
    with pytest.raises(DataError, match=r"split folder .*train has no label folders"):
        discover([tmp_path / "ds"])


def test_label_folders_without_images(tmp_path):
    root = tmp_path / "ds"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    (root / "fake" / "clip.mp4").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"holds no images.*clip\.mp4"):
        discover([root])


def test_mixed_split_and_label_folders(tmp_path):
    img(tmp_path / "ds" / "train" / "real" / "a.png")
    img(tmp_path / "ds" / "fake" / "b.png")
    with pytest.raises(DataError, match="mixes split folders"):
        discover([tmp_path / "ds"])


def test_not_a_folder_or_csv(tmp_path):
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(DataError, match="neither a folder nor a .csv"):
        discover([tmp_path / "list.txt"])


# -- CSV manifests -----------------------------------------------------------------------


def test_csv_minimal_relative_and_absolute(tmp_path):
    a = img(tmp_path / "imgs" / "a.png")
    b = img(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "m.csv").write_text(f"path,label\nimgs/a.png,Real\n{b},deepfake\n")
    samples = discover([tmp_path / "m.csv"])
    assert {(s.path, s.label, s.split, s.dataset) for s in samples} == {
        (a, REAL, None, "m"), (b, FAKE, None, "m"),
    }


def test_csv_with_video_split_and_extra_columns(tmp_path):
    rows = ["Path,Label,Video,Split,score"]
    for i in range(2):
        img(tmp_path / f"r{i}.png")
        img(tmp_path / f"f{i}.png")
        rows.append(f"r{i}.png,0,vid7,train,0.1")
        rows.append(f"f{i}.png,1,vid7,Training,0.9")  # same video name, other label
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = discover([tmp_path / "m.csv"])
    assert {s.split for s in samples} == {"train"}
    assert {s.video for s in samples} == {"train/real/vid7", "train/fake/vid7"}


def test_csv_video_from_path_rules(tmp_path):
    rows = ["path,label"]
    for i in range(2):
        for rel, lab in [(f"fake/v1/{i}.png", 1), (f"real/v1_frame_{i}.png", 0),
                         (f"frames/v9/{i:04d}.png", 1), (f"imgs/still{i}.png", 0)]:
            img(tmp_path / rel)
            rows.append(f"{rel},{lab}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    videos = Counter(s.video for s in discover([tmp_path / "m.csv"]))
    assert videos == {
        "fake/fake/v1": 2, "real/real/v1": 2, "fake/frames/v9": 2,
        "real/imgs/still0": 1, "real/imgs/still1": 1,
    }


@pytest.mark.parametrize(
    "body, pattern",
    [
        ("a.png,maybe\n", r"line 2: label 'maybe'"),
        ("a.png,1,v,holdout\n", r"line 2: split 'holdout'"),
        (",1\n", r"line 2: the path cell is empty"),
        ("clip.mp4,1\n", r"line 2: clip.mp4 is not an image"),
        ("a.png,1\na.png,0\n", r"line 3: .*already listed on line 2"),
    ],
)
def test_csv_bad_rows_name_the_line(tmp_path, body, pattern):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,video,split\n" + body)
    with pytest.raises(DataError, match=pattern) as e:
        discover([tmp_path / "m.csv"])
    assert "m.csv" in str(e.value)


def test_csv_without_required_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(DataError, match="no path or label column"):
        discover([tmp_path / "m.csv"])


def test_csv_missing_files_reported_and_all_missing_is_error(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,1\ngone.png,0\n")
    found = scan([tmp_path / "m.csv"])
    assert [s.path.name for s in found.samples] == ["a.png"]
    assert [p.name for p, _ in found.missing] == ["gone.png"]
    assert "line 3" in found.missing[0][1]
    (tmp_path / "n.csv").write_text("path,label\ngone.png,0\n")
    with pytest.raises(DataError, match="none of its 1 files exist"):
        discover([tmp_path / "n.csv"])


# -- splits ------------------------------------------------------------------------------


def make_videos(root: Path, label: str, n_videos: int, frames) -> None:
    for v in range(n_videos):
        video_frames(root / label / f"v{v}", frames(v))


def test_auto_split_groups_videos_and_stratifies(tmp_path):
    root = tmp_path / "ds"
    make_videos(root, "real", 10, lambda v: 2 + v % 3)
    make_videos(root, "fake", 30, lambda v: 1 + v % 4)
    samples = assign_splits(discover([root]), val_fraction=0.2, test_fraction=0.2, seed=3)
    splits_of_video = defaultdict(set)
    for s in samples:
        splits_of_video[s.video].add(s.split)
    assert all(len(v) == 1 for v in splits_of_video.values())  # no video straddles splits
    counts = class_counts(samples)
    for label in ("real", "fake"):
        total = sum(counts[split][label] for split in counts)
        for split, frac in (("val", 0.2), ("test", 0.2)):
            assert counts[split][label] > 0
            assert abs(counts[split][label] / total - frac) < 0.12
    check_splits(samples, need_test=True)


def test_auto_split_is_deterministic_and_seeded(tmp_path):
    root = tmp_path / "ds"
    make_videos(root, "real", 12, lambda v: 2)
    make_videos(root, "fake", 12, lambda v: 2)
    samples = discover([root])
    a = assign_splits(samples, seed=1)
    b = assign_splits(list(samples), seed=1)
    c = assign_splits(samples, seed=2)
    assert a == b
    assert [s.split for s in a] != [s.split for s in c]
    assert [s.path for s in a] == [s.path for s in samples]  # order kept


def test_small_dataset_gets_one_video_per_class_in_val(tmp_path):
    root = tmp_path / "ds"
    make_videos(root, "real", 2, lambda v: 5)
    make_videos(root, "fake", 2, lambda v: 5)
    samples = assign_splits(discover([root]), val_fraction=0.05)
    counts = class_counts(samples)
    assert counts["val"] == {"real": 5, "fake": 5}
    assert counts["train"] == {"real": 5, "fake": 5}


def test_explicit_splits_kept_and_val_carved_from_train(tmp_path):
    root = tmp_path / "ds"
    make_videos(root / "train", "real", 6, lambda v: 3)
    make_videos(root / "train", "fake", 6, lambda v: 3)
    make_videos(root / "test", "real", 2, lambda v: 1)
    make_videos(root / "test", "fake", 2, lambda v: 1)
    before = discover([root])
    after = assign_splits(before, val_fraction=0.3)
    for s0, s1 in zip(before, after):
        if s0.split == "test":
            assert s1.split == "test"
        else:
            assert s1.split in {"train", "val"}
    videos = defaultdict(set)
    for s in after:
        videos[s.video].add(s.split)
    assert all(len(v) == 1 for v in videos.values())
    counts = class_counts(after)
    assert counts["val"]["real"] > 0 and counts["val"]["fake"] > 0
    assert counts["test"] == {"real": 2, "fake": 2}


def test_explicit_val_is_not_touched(tmp_path):
    root = tmp_path / "ds"
    make_videos(root / "train", "real", 3, lambda v: 1)
    make_videos(root / "train", "fake", 3, lambda v: 1)
    make_videos(root / "val", "real", 1, lambda v: 1)
    make_videos(root / "val", "fake", 1, lambda v: 1)
    before = discover([root])
    assert assign_splits(before) == before


def test_csv_mixed_split_column(tmp_path):
    rows = ["path,label,video,split"]
    for i in range(8):
        for lab in (0, 1):
            name = f"{lab}_{i}.png"
            img(tmp_path / name)
            split = "test" if i == 0 else ""
            rows.append(f"{name},{lab},v{i // 2},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = assign_splits(discover([tmp_path / "m.csv"]), val_fraction=0.3)
    assert sum(s.split == "test" for s in samples) == 2
    videos = defaultdict(set)
    for s in samples:
        videos[s.video].add(s.split)
    assert all(len(v) == 1 for v in videos.values())
    check_splits(samples)


def test_check_splits_single_class_message(tmp_path):
    samples = [
        Sample(Path("a.png"), REAL, "a", "train"), Sample(Path("b.png"), FAKE, "b", "train"),
        Sample(Path("c.png"), FAKE, "c", "val"),
    ]
    with pytest.raises(DataError) as e:
        check_splits(samples)
    msg = str(e.value)
    assert "val split has only one class" in msg
    assert "0 real, 1 fake" in msg and "val_fraction" in msg


def test_check_splits_empty_val_and_missing_test():
    train = [Sample(Path("a.png"), REAL, "a", "train"), Sample(Path("b.png"), FAKE, "b", "train")]
    with pytest.raises(DataError, match="val split is empty"):
        check_splits(train)
    val = [Sample(Path("c.png"), REAL, "c", "val"), Sample(Path("d.png"), FAKE, "d", "val")]
    both = train + val
    check_splits(both)
    with pytest.raises(DataError, match="test split is empty"):
        check_splits(both, need_test=True)


def test_single_class_dataset_fails_check(tmp_path):
    make_videos(tmp_path / "ds", "fake", 4, lambda v: 2)
    samples = assign_splits(discover([tmp_path / "ds"]))
    with pytest.raises(DataError, match="train split has only one class.*add real images"):
        check_splits(samples)


def test_bad_fractions():
    with pytest.raises(DataError, match="val_fraction"):
        assign_splits([], val_fraction=0.6, test_fraction=0.5)
