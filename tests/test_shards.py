"""Sharded datasets (deepfake-detect shard): written, read back, trained from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_dataset, tiny_config
from typer.testing import CliRunner

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import DataConfig
from deepfake_detect.data import FaceDataModule
from deepfake_detect.data.shard_reader import is_shard_folder, raw_items, read_index, shard_info
from deepfake_detect.data.shards import write_shards
from deepfake_detect.errors import DeepfakeDetectError

PRE = {"input_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _module(path: Path | list[Path], **data) -> FaceDataModule:
    paths = path if isinstance(path, list) else [path]
    cfg = DataConfig(path=paths, batch_size=4, num_workers=0, augment={"hflip": 0.0}, **data)
    dm = FaceDataModule(cfg, PRE, seed=0, progress=False)
    dm.setup()
    return dm


def _key(s):
    return (str(s.path), s.label, s.video, s.split, s.dataset, s.frame, s.group)


@pytest.mark.parametrize("splits", [None, ("train", "val", "test")])
def test_shards_read_back_the_same_samples_per_split(tmp_path: Path, splits) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=5, splits=splits)
    report = write_shards([data], tmp_path / "shards", test_fraction=0.2)
    assert is_shard_folder(tmp_path / "shards") and not report.skipped
    info = shard_info(tmp_path / "shards")
    assert info["deepfake_detect.shards"] == 1 and info["inputs"] == [str(data)]
    assert info["deepfake_detect"]

    folder = _module(data, test_fraction=0.2)  # the splits training on the folder makes
    for split in ("train", "val", "test"):
        expected = folder.samples(split)
        got = read_index(tmp_path / "shards", split)
        assert [_key(s) for s in got] == [_key(s) for s in expected], split
        items = raw_items(tmp_path / "shards", split)
        assert [it["index"] for it in items] == list(range(len(expected)))
        for it, s in zip(items, expected):
            assert it["image"] == s.path.read_bytes()  # the bytes as cut, not re-encoded
            assert it["label"] == s.label
            assert it["meta"]["video"] == s.video and it["meta"]["group"] == s.group
        per = {"real": sum(s.label == 0 for s in expected),
               "fake": sum(s.label == 1 for s in expected)}
        assert info["counts"][split] == per
        assert info["videos"][split] == len({s.video for s in expected})
    # a video never straddles splits
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for s in read_index(tmp_path / "shards", split):
            assert seen.setdefault(s.video, split) == split


def test_shard_loaders_give_what_the_folder_loaders_give(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=4)
    write_shards([data], tmp_path / "shards")
    folder, sharded = _module(data), _module(tmp_path / "shards")
    assert sharded.shards is not None and sharded.class_counts() == folder.class_counts()
    for split, loader in (("val", FaceDataModule.val_dataloader),):
        a = list(loader(folder))
        b = list(loader(sharded))
        ia = torch.cat([x["index"] for x in a])
        ib = torch.cat([x["index"] for x in b])
        assert sorted(ib.tolist()) == list(range(len(folder.samples(split))))  # each once
        order = torch.argsort(ib)
        torch.testing.assert_close(torch.cat([x["image"] for x in b])[order],
                                   torch.cat([x["image"] for x in a])[torch.argsort(ia)])
        assert torch.equal(torch.cat([x["label"] for x in b])[order],
                           torch.cat([x["label"] for x in a])[torch.argsort(ia)])
    train = list(sharded.train_dataloader())
    seen = torch.cat([x["index"] for x in train]).tolist()
    assert len(seen) == len(set(seen)) and len(seen) >= len(sharded.samples("train")) - 4


def test_unreadable_images_are_skipped_when_sharding_and_corrupt_items_when_reading(
    tmp_path: Path,
) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=4, splits=("train", "val"))
    broken = data / "val" / "fake" / "val000_frame_0.png"
    broken.write_bytes(b"not a png")
    report = write_shards([data], tmp_path / "shards")
    assert [p for p, _ in report.skipped] == [str(broken)]
    entry = shard_info(tmp_path / "shards")["skipped"][0]
    assert entry["path"] == str(broken) and entry["split"] == "val"  # counted with its split

    # an item whose bytes do not decode (e.g. truncated after the header check): skipped, counted
    truncated = data / "val" / "fake" / "val001_frame_0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    write_shards([data], tmp_path / "shards2", verify="none")
    dm = _module(tmp_path / "shards2")
    batches = list(dm.val_dataloader())
    skipped = [s for b in batches for s in b["skipped"]]
    assert {p for p, _ in skipped} == {str(broken), str(truncated)}
    scored = sum(len(b["label"]) for b in batches)
    assert scored == len(dm.samples("val")) - 2


def test_shard_refuses_an_out_inside_the_inputs(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", videos_per_class=2)
    with pytest.raises(DeepfakeDetectError, match="holds the input"):
        write_shards([data], tmp_path)
    with pytest.raises(DeepfakeDetectError, match="inside the input|holds the input"):
        write_shards([data], data)
    with pytest.raises(DeepfakeDetectError, match="inside the input"):
        write_shards([data], data / "shards")
    assert not (data / "shards").exists()


def test_training_from_shards_matches_training_from_the_folder(tmp_path: Path) -> None:
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=5)
    write_shards([data], tmp_path / "shards", test_fraction=0.2)
    runs = {}
    for name, path in (("folder", data), ("shards", tmp_path / "shards")):
        base = tiny_config(path, tmp_path / "runs", epochs=1)
        base["data"]["test_fraction"] = 0.2
        runs[name] = train(load_config(base=base), out=tmp_path / f"run-{name}")
    reports = {k: json.loads((r.run_dir / "report.json").read_text()) for k, r in runs.items()}
    assert reports["shards"]["class_counts"] == reports["folder"]["class_counts"]
    assert reports["shards"]["skipped"] == 0
    rows = {}
    for name, r in runs.items():
        with open(r.run_dir / "test" / "predictions.csv", newline="") as fh:
            rows[name] = list(csv.DictReader(fh))
    assert len(rows["shards"]) == len(rows["folder"]) == 6
    assert sorted((r["video"], r["label"]) for r in rows["shards"]) == sorted(
        (r["video"], r["label"]) for r in rows["folder"])
    assert "auc" in runs["shards"].test_metrics["frame"]


def test_shard_cli(tmp_path: Path) -> None:
    from deepfake_detect.cli.app import app

    data = make_dataset(tmp_path / "ds", videos_per_class=3)
    runner = CliRunner()
    result = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path / "s"),
                                 "--val-fraction", "0.3", "--split-seed", "1"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "val" in result.output
    info = shard_info(tmp_path / "s")
    assert info["split_rule"]["val_fraction"] == 0.3 and info["split_rule"]["split_seed"] == 1
    bad = runner.invoke(app, ["shard", str(data), "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "holds the input" in bad.output + str(bad.exception)
    helped = runner.invoke(app, ["shard", "--help"])
    assert helped.exit_code == 0 and "deepfake-detect shard" in helped.output


def test_sharding_writes_nothing_outside_its_output(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from deepfake_detect.data.shards import write_shards

    # litdata stages chunks under the temp folder unless told otherwise: point it at an empty
    # folder and check that it stays empty
    elsewhere = tmp_path / "tmp"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    data = make_dataset(tmp_path / "data", videos_per_class=3, frames=2)
    write_shards([data], tmp_path / "shards")
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "shards" / ".litdata-work").exists()


def test_heldout_groups_with_shards_leave_whole_videos_out_and_train(tmp_path: Path) -> None:
    from test_groups import ffpp

    from deepfake_detect.training.train import train

    root = ffpp(tmp_path / "ff", reals=8)
    write_shards([root], tmp_path / "shards", val_fraction=0.25, test_fraction=0.25)
    written = {split: read_index(tmp_path / "shards", split) for split in ("train", "val", "test")}
    held_videos = {s.video for ss in written.values() for s in ss if s.group == "NeuralTextures"}
    assert held_videos
    dm = _module(tmp_path / "shards", holdout_groups=["NeuralTextures"])
    assert not dm.shard_streams  # read item by item: the splits have holes now
    for split, samples in written.items():
        kept = [_key(s) for s in samples if s.video not in held_videos]
        assert [_key(s) for s in dm.samples(split)] == kept, split  # the splits as written
    heldout = dm.samples("heldout")
    assert {s.video for s in heldout if s.label == 1} == held_videos
    assert [_key(s) for s in heldout if s.label == 0] == [
        _key(s) for s in written["test"] if s.label == 0]
    # the images come from the shards' items, with the folder's bytes
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch["index"].tolist()) <= set(range(len(dm.samples("train"))))

    base = tiny_config(tmp_path / "shards", tmp_path / "runs", epochs=1)
    base["data"]["holdout_groups"] = ["NeuralTextures"]
    base["eval"] = {"plots": False}
    result = train(load_config(base=base), out=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["heldout"]["groups"] == ["NeuralTextures"]
    n_held = sum(1 for s in heldout if s.label == 1)
    assert report["heldout"]["frame"]["n_fake"] == n_held
    assert report["heldout"]["frame"]["n_real"] == len(heldout) - n_held
    assert report["test"]["frame"]["n_fake"] == sum(
        s.label for s in written["test"] if s.video not in held_videos)


def test_balanced_sampler_with_shards_draws_both_classes_alike(tmp_path: Path) -> None:
    # 2 real videos against 10 fake ones: the sampler draws the reals about as often
    data = tmp_path / "ds"
    make_dataset(data, videos_per_class=10, frames=2, splits=("train", "val"))
    for path in sorted((data / "train" / "real").iterdir())[4:]:
        path.unlink()
    write_shards([data], tmp_path / "shards")
    dm = _module(tmp_path / "shards", balance="sampler")
    assert not dm.shard_streams
    train = dm.samples("train")
    assert sum(s.label == 0 for s in train) == 4 and sum(s.label == 1 for s in train) == 20
    labels = torch.cat([b["label"] for _ in range(10) for b in dm.train_dataloader()])
    assert 0.35 < labels.float().mean().item() < 0.65  # unbalanced data would give 0.83
    # the sampler-driven loaders cannot resume mid-epoch: refused up front
    from deepfake_detect.errors import ConfigError
    from deepfake_detect.training.train import train as run_train

    base = tiny_config(tmp_path / "shards", tmp_path / "runs", epochs=1,
                       checkpoint_every_n_steps=2)
    base["data"]["balance"] = "sampler"
    with pytest.raises(ConfigError, match="streams"):
        run_train(load_config(base=base), out=tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete"])
def test_a_corrupt_chunk_is_named_and_the_rest_trains(tmp_path: Path, damage: str, caplog) -> None:
    from deepfake_detect.data.shard_reader import check_chunks
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=6, frames=4, splits=("train", "val"))
    shards = tmp_path / "shards"
    write_shards([data], shards, chunk_bytes="20KB")  # several chunks per split
    index = json.loads((shards / "train" / "index.json").read_text())
    assert len(index["chunks"]) >= 3
    victim = shards / "train" / index["chunks"][1]["filename"]
    lost = index["chunks"][1]["chunk_size"]
    body = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(body[: len(body) // 2])
    elif damage == "overwrite":
        victim.write_bytes(bytes(len(body)))
    else:
        victim.unlink()
    assert [(n, k) for n, k, _ in check_chunks(shards / "train")] == [(victim.name, lost)]
    assert check_chunks(shards / "val") == []

    base = tiny_config(shards, tmp_path / "runs", epochs=1, evaluate_test=False)
    with caplog.at_level("WARNING", logger="deepfake_detect.data.datamodule"):
        result = train(load_config(base=base), out=tmp_path / "run")
    assert f"train/{victim.name} is unreadable" in caplog.text
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["skipped"] == lost  # the samples of that chunk, each by its source file
    written = {str(s.path) for s in read_index(shards, "train")}
    assert all(e["path"] in written and victim.name in e["error"]
               for e in report["skipped_files"])
    total = sum(report["class_counts"]["train"].values())
    assert total == len(written) - lost
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()


def test_evaluating_shards_with_a_corrupt_chunk_counts_its_samples_skipped(tmp_path: Path) -> None:
    from deepfake_detect.cli.app import app
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=6, frames=4,
                        splits=("train", "val", "test"))
    shards = tmp_path / "shards"
    write_shards([data], shards, chunk_bytes="20KB")
    run = train(load_config(base=tiny_config(data, tmp_path / "runs", epochs=1,
                                             evaluate_test=False)), out=tmp_path / "run")
    index = json.loads((shards / "test" / "index.json").read_text())
    victim = shards / "test" / index["chunks"][0]["filename"]
    victim.write_bytes(victim.read_bytes()[:100])
    lost = index["chunks"][0]["chunk_size"]
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run.best_checkpoint),
                                      "--data", str(shards), "--split", "test", "--out",
                                      str(tmp_path / "ev"), "--no-plots", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(next((tmp_path / "ev").glob("*/metrics.json")).read_text())
    assert metrics["skipped"] == lost
    assert metrics["frame"]["n_real"] + metrics["frame"]["n_fake"] == \
        len(read_index(shards, "test")) - lost


def test_calibrate_and_preview_read_a_local_shard_folder_like_its_source(tmp_path: Path) -> None:
    from deepfake_detect.cli.app import app
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=4, splits=("train", "val", "test"))
    write_shards([data], tmp_path / "shards")
    run = train(load_config(base=tiny_config(data, tmp_path / "runs", epochs=1,
                                             evaluate_test=False)), out=tmp_path / "run")
    runner = CliRunner()
    made = {}
    for name, path in (("folder", data), ("shards", tmp_path / "shards")):
        out = tmp_path / f"cal-{name}"
        out.mkdir()
        result = runner.invoke(app, ["calibrate", "--checkpoint", str(run.best_checkpoint),
                                     "--data", str(path), "--out", str(out / "cal.safetensors"),
                                     "--workers", "0", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        made[name] = json.loads((out / "calibration.json").read_text())
    for key in ("temperature", "threshold"):
        assert made["shards"][key] == pytest.approx(made["folder"][key], rel=1e-6), key
    preview = runner.invoke(app, ["augment-preview", "-c", str(run.run_dir / "config.yaml"),
                                  "--data", str(tmp_path / "shards"), "--out",
                                  str(tmp_path / "preview.png"), "--samples", "2", "--views", "2"])
    assert preview.exit_code == 0, preview.output
    assert (tmp_path / "preview.png").stat().st_size > 1000


def test_error_thumbnails_of_shards_come_from_the_chunks(tmp_path: Path, caplog) -> None:
    # the source files are gone (shards made elsewhere): errors.png still shows the faces
    from deepfake_detect.cli.app import app
    from deepfake_detect.training.train import train

    data = make_dataset(tmp_path / "ds", videos_per_class=4, splits=("train", "val", "test"))
    run = train(load_config(base=tiny_config(data, tmp_path / "runs", epochs=1,
                                             evaluate_test=False)), out=tmp_path / "run")
    write_shards([data], tmp_path / "shards")
    data.rename(tmp_path / "moved-away")
    with caplog.at_level("WARNING", logger="deepfake_detect.evaluation.error_analysis"):
        result = CliRunner().invoke(app, [
            "evaluate", "--checkpoint", str(run.best_checkpoint), "--data",
            str(tmp_path / "shards"), "--split", "all", "--threshold", "0.001", "--out",
            str(tmp_path / "ev"), "--bootstrap", "0", "--workers", "0"])
    assert result.exit_code == 0, result.output
    errors = list((tmp_path / "ev").glob("*/errors.csv"))
    assert errors and len(errors[0].read_text().splitlines()) > 1  # threshold 0.001: the reals err
    assert "cannot read" not in caplog.text


def test_a_shard_folder_beside_a_dataset_folder_trains_on_both(tmp_path: Path) -> None:
    from deepfake_detect.data.shard_reader import ShardSample
    from deepfake_detect.training.train import train

    a = make_dataset(tmp_path / "a", videos_per_class=4, splits=("train", "val"))
    b = make_dataset(tmp_path / "b", videos_per_class=3, seed=1)
    write_shards([a], tmp_path / "shards")
    alone = {split: read_index(tmp_path / "shards", split) for split in ("train", "val")}
    dm = _module([tmp_path / "shards", b])
    assert not dm.shard_streams
    for split in ("train", "val"):
        got = dm.samples(split)
        from_shards = [_key(s) for s in got if isinstance(s, ShardSample)]
        assert from_shards == [_key(s) for s in alone[split]], split  # their splits as written
        assert any(s.dataset == "b" for s in got), split  # the folder's, split as usual
    batches = list(dm.train_dataloader())
    assert sum(len(x["label"]) for x in batches) > 0
    result = train(load_config(base=tiny_config([tmp_path / "shards", b], tmp_path / "runs",
                                                epochs=1, evaluate_test=False)),
                   out=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    total = sum(sum(per.values()) for per in report["class_counts"].values())
    assert total == sum(len(v) for v in alone.values()) + len(_scanned(b))
    assert report["skipped"] == 0


def _scanned(folder: Path) -> list:
    from deepfake_detect.data.sources import scan

    return scan([folder]).samples
