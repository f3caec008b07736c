"""FaceDataModule end to end on tiny generated datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from deepfake_detect.data.samplers import EpochBalancedSampler

from deepfake_detect.config.schema import DataConfig
from deepfake_detect.data import FaceDataModule, build_eval_samples
from deepfake_detect.data.datamodule import default_num_workers
from deepfake_detect.errors import DataError

torch.set_num_threads(1)
PRE = {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def make_dataset(root: Path, real_videos: int, fake_videos: int, frames: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for label, n in (("real", real_videos), ("fake", fake_videos)):
        for v in range(n):
            for f in range(frames):
                arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                path = root / label / f"vid{v}" / f"{f:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


def config(root: Path, **kw) -> DataConfig:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    return DataConfig(path=[root], **kw)


def test_end_to_end_batches_and_skipped(tmp_path):
    root = make_dataset(tmp_path / "ds", 6, 6)
    (root / "fake" / "vid0" / "broken.png").write_bytes(b"")
    (root / "real" / "vid1" / "text.jpg").write_text("not an image")
    (root / "real" / "readme.md").write_text("ignored")
    dm = FaceDataModule(config(root, verify="header", val_fraction=0.3, eval_batch_size=5), PRE)
    dm.setup("fit")
    assert sorted(Path(p).name for p, _ in dm.skipped) == ["broken.png", "text.jpg"]
    assert dm.ignored_files == 1
    counts = dm.class_counts()
    assert set(counts) == {"train", "val"}
    assert sum(sum(c.values()) for c in counts.values()) == 24
    assert counts["val"]["real"] > 0 and counts["val"]["fake"] > 0

    train = dm.train_dataloader()
    batch = next(iter(train))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["skipped"] == []
    assert train.drop_last
    assert sum(len(b["label"]) for b in train) == len(dm.samples("train")) // 4 * 4

    val_batches = list(dm.val_dataloader())
    assert val_batches[0]["image"].shape[0] == 5
    indices = torch.cat([b["index"] for b in val_batches]).tolist()
    assert indices == list(range(len(dm.samples("val"))))  # in order, none dropped
    assert dm.test_dataloader() == []

    summary = dm.summary()
    assert "train" in summary and "val" in summary
    assert "skipped unreadable or missing images: 2" in summary


def test_setup_is_idempotent_and_splits_stable(tmp_path):
    root = make_dataset(tmp_path / "ds", 4, 4)
    dm = FaceDataModule(config(root, verify="none"), PRE)
    dm.setup()
    first = dm.samples("train")
    dm.setup("validate")
    assert dm.samples("train") is not first and dm.samples("train") == first
    other = FaceDataModule(config(root, verify="none"), PRE)
    other.setup()
    assert other.samples("val") == dm.samples("val")


def test_bad_files_loaded_at_runtime_are_skipped(tmp_path):
    root = make_dataset(tmp_path / "ds", 3, 3, frames=1)
    (root / "fake" / "vid0" / "000.png").write_bytes(b"\x89PNG broken")
    dm = FaceDataModule(config(root, verify="none", val_fraction=0.34, batch_size=16), PRE)
    dm.setup()
    assert dm.skipped == []
    batches = list(dm.train_dataloader()) + list(dm.val_dataloader())
    skipped = [s for b in batches for s in b["skipped"]]
    assert [Path(p).name for p, _ in skipped] == ["000.png"]
    assert sum(len(b["label"]) for b in batches) == 5


def test_test_split_and_eval_loader(tmp_path):
    root = make_dataset(tmp_path / "ds", 6, 6, frames=1)
    dm = FaceDataModule(config(root, verify="none", test_fraction=0.2), PRE)
    dm.setup()
    assert dm.has_split("test")
    test = dm.test_dataloader()
    assert sum(len(b["label"]) for b in test) == len(dm.samples("test"))
    samples = build_eval_samples([root])
    assert len(samples) == 12 and {s.split for s in samples} == {None}
    loader = dm.eval_dataloader(samples, batch_size=7)
    assert [len(b["label"]) for b in loader] == [7, 5]


def test_class_weights_and_balanced_sampler(tmp_path):
    root = make_dataset(tmp_path / "ds", 4, 20, frames=2)
    dm = FaceDataModule(config(root, verify="none", balance="sampler", batch_size=8), PRE, seed=1)
    dm.setup()
    counts = dm.class_counts()["train"]
    w = dm.class_weights()
    assert w.shape == (2,) and torch.isclose(w.mean(), torch.tensor(1.0))
    assert torch.isclose(w[0] / w[1], torch.tensor(counts["fake"] / counts["real"]))

    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochBalancedSampler)
    drawn = torch.cat([b["label"] for _ in range(6) for b in loader])
    balanced_real = (drawn == 0).float().mean().item()
    natural_real = counts["real"] / (counts["real"] + counts["fake"])
    assert natural_real < 0.2
    assert 0.35 < balanced_real < 0.65


def test_loader_defaults(tmp_path):
    root = make_dataset(tmp_path / "ds", 2, 2, frames=1)
    dm = FaceDataModule(DataConfig(path=[root], verify="none", batch_size=64), PRE)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == default_num_workers() == min(__import__("os").cpu_count(), 8)
    assert loader.persistent_workers == (loader.num_workers > 0)
    assert loader.pin_memory == torch.cuda.is_available()
    assert not loader.drop_last  # fewer samples than a batch


def test_empty_path_and_single_class(tmp_path):
    with pytest.raises(DataError, match=r"data.path is empty.*data.path=/data/ff\+\+"):
        FaceDataModule(DataConfig(), PRE).setup()
    root = make_dataset(tmp_path / "ds", 0, 3)
    with pytest.raises(DataError, match="only one class"):
        FaceDataModule(config(root, verify="none"), PRE).setup()


def test_too_few_videos_for_val(tmp_path):
    root = make_dataset(tmp_path / "ds", 1, 1, frames=4)
    with pytest.raises(DataError, match="val split is empty.*val_fraction"):
        FaceDataModule(config(root, verify="none"), PRE).setup()


def test_use_before_setup(tmp_path):
    dm = FaceDataModule(config(tmp_path), PRE)
    with pytest.raises(RuntimeError, match="setup"):
        dm.samples("train")


@pytest.mark.parametrize("sampler_cls", ["random", "balanced"])
def test_sampler_order_depends_only_on_seed_and_epoch(sampler_cls):
    from deepfake_detect.data.samplers import EpochRandomSampler

    labels = [0] * 30 + [1] * 10

    def make():
        if sampler_cls == "random":
            return EpochRandomSampler(labels, seed=3)
        return EpochBalancedSampler(labels, seed=3)

    a, b = make(), make()
    first, second = list(a), list(a)  # consecutive iterations are consecutive epochs
    assert first != second
    b.set_epoch(1)  # a resumed run starts at epoch 1 and must see what epoch 1 saw
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first
    if sampler_cls == "random":
        assert sorted(first) == list(range(40))
