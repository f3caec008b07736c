from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_dataset, tiny_config
from deepfake_detect import load_checkpoint
from deepfake_detect.config import load_config
from deepfake_detect.errors import ConfigError
from deepfake_detect.training.train import train


def _read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _val_rows(run_dir: Path) -> list[dict]:
    return [r for r in _read_metrics(run_dir) if r.get("val_auc")]


def test_train_writes_one_complete_run_folder(toy_dataset, tmp_path):
    cfg = load_config(base=tiny_config(toy_dataset, tmp_path / "runs"))
    result = train(cfg, out=tmp_path / "run")
    run = result.run_dir
    for name in ("config.yaml", "run.json", "metrics.csv", "report.json", "model.safetensors",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "test/metrics.json",
                 "test/predictions.csv", "test/roc.png", "learning_curves.png"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["timm_name"] == "test_resnet"
    assert saved["model"]["head"]["type"] == "linear"  # defaults are resolved into the file
    info = json.loads((run / "run.json").read_text())
    assert info["deepfake_detect"] == "0.1.0" and info["git_commit"]
    assert len(_val_rows(run)) == 2
    report = json.loads((run / "report.json").read_text())
    assert report["skipped"] == 0
    assert report["class_counts"]["train"] == {"real": 18, "fake": 18}
    # The toy task is easy: two epochs separate it.
    assert result.test_metrics["frame"]["auc"] > 0.9

    detector = load_checkpoint(result.best_checkpoint)
    exported = load_checkpoint(run / "model.safetensors")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(detector(x), exported(x))
    assert detector.threshold == exported.threshold == pytest.approx(0.5)


def test_resume_continues_exactly(toy_dataset, tmp_path):
    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=2)
    base["data"]["augment"] = {"hflip": 0.5}  # random state must be restored too
    straight = train(load_config(base=base), out=tmp_path / "straight")

    first = dict(base, train={**base["train"], "epochs": 1})
    train(load_config(base=first), out=tmp_path / "resumed")
    resumed = train(load_config(base=base), out=tmp_path / "resumed", resume=True)

    a = torch.load(straight.run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed.run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert [r["val_auc"] for r in _val_rows(straight.run_dir)] == [
        r["val_auc"] for r in _val_rows(resumed.run_dir)
    ]


def test_resume_without_checkpoint_is_a_clear_error(toy_dataset, tmp_path):
    cfg = load_config(base=tiny_config(toy_dataset, tmp_path / "runs"))
    with pytest.raises(ConfigError, match="last.ckpt"):
        train(cfg, out=tmp_path / "nothing-here", resume=True)


def test_corrupt_training_files_are_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "d", splits=("train", "val"))
    (data / "train/fake/empty_frame_0.png").write_bytes(b"")
    good = (data / "train/real/train000_frame_0.png").read_bytes()
    (data / "train/real/trunc_frame_0.png").write_bytes(good[: len(good) // 2])
    cfg = load_config(base=tiny_config(data, tmp_path / "runs", epochs=1))
    result = train(cfg, out=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    skipped = {Path(item["path"]).name for item in report["skipped_files"]}
    assert skipped == {"empty_frame_0.png", "trunc_frame_0.png"}
    assert report["skipped"] == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"train": {"scheduler": {"name": "cosine", "warmup_epochs": 0.5}}},
        {"train": {"scheduler": {"name": "onecycle"}, "optimizer": {"name": "sgd", "lr": 0.01}}},
        {"train": {"scheduler": {"name": "plateau"}, "monitor": "val_loss"}},
        {"train": {"loss": {"name": "focal"}}, "data": {"balance": "sampler"}},
        {"model": {"num_classes": 1}, "train": {"loss": {"name": "bce", "label_smoothing": 0.1}}},
        {"train": {"accumulate_grad_batches": 2, "gradient_clip_val": 1.0}, "data": {"balance": "loss_weight"}},
    ],
    ids=["cosine", "onecycle-sgd", "plateau", "focal-sampler", "bce-1logit", "accum-clip-weights"],
)
def test_training_options_run(toy_dataset, tmp_path, overrides):
    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=1)
    for section, values in overrides.items():
        base[section] = {**base[section], **values}
    result = train(load_config(base=base), out=tmp_path / "run")
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert 0.0 <= result.val_metrics["val_auc"] <= 1.0


def test_ddp_validation_equals_single_process(tmp_path):
    # LayerNorm model, no augmentation, one full batch per step: the DDP gradient (mean over
    # ranks of per-rank means of equal size) equals the single-process one, so validation
    # metrics must agree after training.
    data = make_dataset(tmp_path / "d", videos_per_class=8, frames=1, splits=("train", "val"))
    common = [
        "model.name=timm", "model.timm_name=test_convnext", "model.input_size=32",
        f"data.path=[{data}]", "data.num_workers=0", "data.augment.hflip=0", "train.epochs=2",
        "train.accelerator=cpu", "train.optimizer.lr=0.003", "log.tensorboard=false",
        "log.progress=false", "train.evaluate_test=false",
    ]
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: timm}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "deepfake_detect", "train", "-c", str(config)]
    runs = {}
    for name, extra in (("single", ["train.devices=1", "data.batch_size=16"]),
                        ("ddp", ["train.devices=2", "train.strategy=ddp", "data.batch_size=8"])):
        out = tmp_path / name
        proc = subprocess.run([*cli, "--out", str(out), *common, *extra], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = _val_rows(out)
    assert len(runs["single"]) == len(runs["ddp"]) == 2
    for single, ddp in zip(runs["single"], runs["ddp"]):
        assert float(single["val_auc"]) == pytest.approx(float(ddp["val_auc"]), abs=1e-6)
        assert float(single["val_loss"]) == pytest.approx(float(ddp["val_loss"]), rel=1e-4)


def test_the_datas_prepare_settings_win_over_the_configs(toy_dataset, tmp_path):
    from deepfake_detect.config.schema import PrepareConfig

    made = PrepareConfig.model_validate({"crop": {"mode": "align", "size": 48}})
    (toy_dataset / "prepare.json").write_text(json.dumps({"prepare": made.model_dump(mode="json")}))
    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=1, evaluate_test=False)
    base["prepare"] = {"crop": {"mode": "box", "size": 64}}  # e.g. a recipe's default
    result = train(load_config(base=base), out=tmp_path / "run")
    stored = load_checkpoint(result.run_dir / "model.safetensors").checkpoint_meta.experiment
    assert PrepareConfig.model_validate(stored["prepare"]) == made
