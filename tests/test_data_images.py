"""Image decoding to RGB, file verification, transforms and the skipping dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detect.config.schema import AugmentConfig
from deepfake_detect.data.datasets import FaceImageDataset, collate_skipping
from deepfake_detect.data.images import ImageLoadError, load_rgb, verify_images
from deepfake_detect.data.samples import FAKE, REAL, Sample
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.errors import ConfigError, DataError

torch.set_num_threads(1)
PRE = {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def rgb_array(path: Path) -> np.ndarray:
    im = load_rgb(path)
    assert im.mode == "RGB"
    arr = np.asarray(im)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def noise_jpeg(path: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=95)
    return path


# -- mode conversions --------------------------------------------------------------------


def test_rgb_passes_through(tmp_path):
    Image.new("RGB", (5, 3), (10, 20, 30)).save(tmp_path / "a.png")
    arr = rgb_array(tmp_path / "a.png")
    assert arr.shape == (3, 5, 3) and tuple(arr[0, 0]) == (10, 20, 30)


def test_grayscale_l(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "a.png")
    assert (rgb_array(tmp_path / "a.png") == 77).all()


def test_one_bit(tmp_path):
    im = Image.new("1", (4, 4), 0)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "a.png")
    arr = rgb_array(tmp_path / "a.png")
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[1, 1]) == (0, 0, 0)


def test_la_composited_on_black(tmp_path):
    Image.new("LA", (4, 4), (200, 128)).save(tmp_path / "a.png")
    arr = rgb_array(tmp_path / "a.png")
    assert np.allclose(arr, 100, atol=1)  # 200 at half opacity over black


def test_rgba_composited_on_black(tmp_path):
    im = Image.new("RGBA", (4, 4), (200, 100, 50, 255))
    im.putpixel((0, 0), (255, 255, 255, 0))  # fully transparent white -> black
    im.save(tmp_path / "a.png")
    arr = rgb_array(tmp_path / "a.png")
    assert tuple(arr[0, 0]) == (0, 0, 0)
    assert tuple(arr[1, 1]) == (200, 100, 50)


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.save(tmp_path / "plain.png")
    assert tuple(rgb_array(tmp_path / "plain.png")[2, 2]) == (10, 200, 30)
    im.save(tmp_path / "gif.gif")
    assert tuple(rgb_array(tmp_path / "gif.gif")[2, 2]) == (10, 200, 30)
    im.putpixel((0, 0), 2)
    im.save(tmp_path / "transparent.png", transparency=2)
    arr = rgb_array(tmp_path / "transparent.png")
    assert tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[2, 2]) == (10, 200, 30)


def test_cmyk(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "a.jpg", quality=100)
    r, g, b = rgb_array(tmp_path / "a.jpg")[2, 2].astype(int)
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, mode):
    arr16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    if mode == "I;16":
        im = Image.fromarray(arr16)
    else:  # PIL's convert() to I;16B clips, so build it from big-endian bytes
        im = Image.frombytes(mode, (4, 1), arr16.astype(">u2").tobytes())
    assert im.mode == mode
    path = tmp_path / ("a.png" if mode == "I;16" else "a.tif")
    im.save(path)
    assert Image.open(path).mode in {"I;16", "I;16B", "I"}
    out = rgb_array(path)[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]


def test_mode_i_and_f(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert rgb_array(tmp_path / "i.tif")[0, :, 1].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert rgb_array(tmp_path / "f.tif")[0, :, 2].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "a.jpg", exif=exif, quality=100)
    arr = rgb_array(tmp_path / "a.jpg")
    assert arr.shape[:2] == (40, 20)  # portrait after transposing
    assert arr[5, 10].mean() > 200 and arr[35, 10].mean() < 50  # white ends up on top


# -- unreadable files --------------------------------------------------------------------


def bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image")
    data = noise_jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "ok.png")
    Image.open(tmp_path / "full.jpg").save(tmp_path / "full.png")
    png = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    return {
        "empty": tmp_path / "empty.png",
        "text": tmp_path / "text.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "cut": tmp_path / "cut.png",
        "missing": tmp_path / "missing.png",
        "ok": tmp_path / "ok.png",
    }


@pytest.mark.parametrize(
    "kind, reason",
    [("empty", "0 bytes"), ("text", "not an image"), ("truncated", "truncated or corrupt"),
     ("cut", "truncated or corrupt"), ("missing", "not found")],
)
def test_load_errors_name_path_and_reason(tmp_path, kind, reason):
    path = bad_files(tmp_path)[kind]
    with pytest.raises(ImageLoadError) as e:
        load_rgb(path)
    assert isinstance(e.value, DataError)
    assert reason in e.value.reason and str(path) in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))
    assert again.reason == e.value.reason and again.path == e.value.path


def test_verify_modes(tmp_path):
    files = bad_files(tmp_path)
    paths = list(files.values())
    assert verify_images(paths, "none") == []
    full = dict(verify_images([*paths, tmp_path / "full.png"], "full", workers=2))
    assert set(full) == set(paths) - {files["ok"]}
    header = dict(verify_images(paths, "header", workers=2))
    # the header check is cheap: it may miss a truncated JPEG, but nothing else
    assert {files["empty"], files["text"], files["cut"], files["missing"]} <= set(header)
    assert files["ok"] not in header
    assert "0 bytes" in header[files["empty"]]
    with pytest.raises(DataError, match="data.verify"):
        verify_images(paths, "deep")


# -- transforms --------------------------------------------------------------------------


def test_eval_transform_shape_and_normalisation():
    tf = build_transform(PRE)
    out = tf(Image.new("RGB", (50, 70), (128, 128, 128)))
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-4)
    assert torch.equal(out, tf(Image.new("RGB", (50, 70), (128, 128, 128))))  # deterministic


def test_train_transform_with_all_augmentations():
    aug = AugmentConfig(
        hflip=1.0, rotation=10, color_jitter=(0.2, 0.2, 0.2, 0.05), random_erasing=1.0,
        scale=(0.5, 1.0),
    )
    tf = build_transform(PRE, aug)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == [
        "ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation", "ColorJitter",
        "ToDtype", "Normalize", "RandomErasing", "ToPureTensor",
    ]
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    out = tf(im)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_horizontal_flip_happens():
    im = Image.new("RGB", (32, 32), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 16, 32))  # white left half
    out = build_transform(PRE, AugmentConfig(hflip=1.0))(im)
    assert out[:, :, -1].mean() > out[:, :, 0].mean()  # white now on the right


def test_transform_config_errors():
    with pytest.raises(ConfigError, match="input_size"):
        build_transform({"mean": [0, 0, 0], "std": [1, 1, 1]})
    with pytest.raises(ConfigError, match="color_jitter"):
        build_transform(PRE, AugmentConfig(color_jitter=(0.1, 0.1, 0.1, 0.9)))


# -- dataset and collate -----------------------------------------------------------------


def test_dataset_reports_bad_files_and_collate_skips(tmp_path):
    files = bad_files(tmp_path)
    samples = [
        Sample(files["ok"], REAL, "ok"), Sample(files["empty"], FAKE, "e"),
        Sample(files["ok"], FAKE, "ok2"),
    ]
    ds = FaceImageDataset(samples, build_transform(PRE))
    assert len(ds) == 3
    bad = ds[1]
    assert bad["index"] == 1 and bad["path"] == str(files["empty"]) and "0 bytes" in bad["error"]
    batch = collate_skipping([ds[i] for i in range(3)])
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["label"].tolist() == [REAL, FAKE] and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == [0, 2]
    assert batch["skipped"] == [(str(files["empty"]), bad["error"])]


def test_collate_all_bad_batch(tmp_path):
    files = bad_files(tmp_path)
    ds = FaceImageDataset([Sample(files["text"], REAL, "t")], build_transform(PRE))
    batch = collate_skipping([ds[0]])
    assert batch["image"] is None
    assert batch["label"].shape == (0,) and batch["index"].shape == (0,)
    assert len(batch["skipped"]) == 1
