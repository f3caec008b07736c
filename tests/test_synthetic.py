import re

import numpy as np
import pytest
from PIL import Image

from deepfake_detect.data.sbi import self_blend
from deepfake_detect.demo.faces import generate_dataset, random_identity, render_face
from deepfake_detect.errors import DataError

NAME = re.compile(r"^(id\d{4,})_frame_(\d{3})\.png$")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    summary = generate_dataset(
        out, n_identities=10, images_per_identity=2, size=48, seed=3, progress=False, workers=1
    )
    return out, summary


def test_layout_names_and_counts(small):
    out, summary = small
    assert (out / "README.txt").read_text().startswith("Synthetic face-forgery dataset")
    total = 0
    for split in ("train", "val", "test"):
        for label in ("real", "fake"):
            names = sorted(p.name for p in (out / split / label).iterdir())
            assert all(NAME.match(n) for n in names), names
            assert len(names) == summary["splits"][split][label]
            total += len(names)
        # every real frame has its self-blended fake under the same name
        assert sorted(p.name for p in (out / split / "real").iterdir()) == sorted(
            p.name for p in (out / split / "fake").iterdir()
        )
    assert total == summary["images"] == 10 * 2 * 2
    n_ids = {sp: summary["splits"][sp]["identities"] for sp in ("train", "val", "test")}
    assert n_ids["train"] == 7 and n_ids["val"] + n_ids["test"] == 3
    assert min(n_ids.values()) >= 1


def test_identities_disjoint_across_splits(small):
    out, _ = small
    ids = {}
    for split in ("train", "val", "test"):
        ids[split] = {NAME.match(p.name).group(1) for p in (out / split).rglob("*.png")}
        assert ids[split]
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert len(ids["train"] | ids["val"] | ids["test"]) == 10


def test_images_valid(small):
    out, _ = small
    for path in list((out / "train").rglob("*.png"))[:8]:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
            assert np.asarray(im).std() > 5  # not a blank image


def test_deterministic_under_seed_and_workers(tmp_path, small):
    out, _ = small
    again = generate_dataset(
        tmp_path / "a",
        n_identities=10,
        images_per_identity=2,
        size=48,
        seed=3,
        progress=False,
        workers=2,
    )
    assert again["images"] == 40
    assert _tree(tmp_path / "a") == _tree(out)
    other = generate_dataset(
        tmp_path / "b",
        n_identities=10,
        images_per_identity=2,
        size=48,
        seed=4,
        progress=False,
        workers=1,
    )
    assert other["images"] == 40
    assert _tree(tmp_path / "b") != _tree(out)


def test_jpeg_format(tmp_path):
    s = generate_dataset(
        tmp_path, n_identities=3, images_per_identity=1, size=40, seed=0, fmt="jpeg", progress=False
    )
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == s["images"] == 6
    with Image.open(files[0]) as im:
        assert im.format == "JPEG"


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="fmt"):
        generate_dataset(tmp_path, 2, 1, fmt="gif", progress=False)
    with pytest.raises(DataError, match="splits"):
        generate_dataset(tmp_path, 2, 1, splits=(0.5, 0.5), progress=False)


def test_render_face_outputs():
    rng = np.random.default_rng(0)
    img, info = render_face(rng, random_identity(rng), 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert info["face_mask"].shape == (64, 64)
    frac = info["face_mask"].mean()
    assert 0.1 < frac < 0.6  # the face is a sizeable part of the crop, not all of it
    lm = info["landmarks"]
    assert lm.ndim == 2 and lm.shape[1] == 2
    assert ((lm >= 0) & (lm < 64)).all()


def test_fake_differs_mostly_inside_the_face():
    rng = np.random.default_rng(1)
    inside, outside = [], []
    for _ in range(6):
        img, info = render_face(rng, random_identity(rng), 64)
        fake, mask = self_blend(img, info, rng, return_mask=True)
        diff = np.abs(fake.astype(np.float32) - img.astype(np.float32)).mean(2)
        face = info["face_mask"] > 0.5
        inside.append(diff[face].mean())
        outside.append(diff[~face].mean())
        assert mask.shape == (64, 64) and 0 <= mask.min() and mask.max() <= 1
    assert np.mean(inside) > 3 * np.mean(outside)
    assert np.mean(inside) > 2


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_self_blend_on_a_plain_image_with_a_mask(dtype):
    rng = np.random.default_rng(2)
    img = (rng.random((50, 40, 3)) * 255).astype(dtype)
    mask = np.zeros((50, 40), np.float32)
    mask[10:40, 8:32] = 1
    out = self_blend(img, mask, rng)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert not np.array_equal(out, img)
    # landmarks work too, and a dict with either key
    pts = np.array([[8, 10], [32, 10], [32, 40], [8, 40]], np.float32)
    assert self_blend(img, pts, rng).shape == img.shape
    assert self_blend(img, {"face_mask": mask}, rng).dtype == img.dtype


def test_self_blend_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError):
        self_blend(np.zeros((20, 20), np.uint8), np.ones((20, 20)), rng)
    with pytest.raises(DataError, match="does not match"):
        self_blend(np.zeros((20, 20, 3), np.uint8), np.ones((10, 10)), rng)
