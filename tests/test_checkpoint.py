"""This tool's checkpoint formats: export, Lightning-style files and load_checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import deepfake_detect
from deepfake_detect import __version__
from deepfake_detect.errors import CheckpointError
from deepfake_detect.models import (
    build_detector,
    checkpoint_meta,
    export_safetensors,
    load_checkpoint,
)

torch.set_num_threads(1)

CONFIGS = {
    "cnn": {"name": "mobilenetv2", "input_size": 64, "attention": "cbam", "num_classes": 1,
            "head": {"type": "mlp", "hidden": [32], "batch_norm": True}},
    # Tuples in backbone_kwargs come back from JSON as lists.
    "swin": {"name": "swin_base", "input_size": 64, "mean": [0.5, 0.5, 0.5],
             "backbone_kwargs": {"depths": (1, 1, 1, 1), "embed_dim": 16,
                                 "num_heads": (1, 1, 2, 2), "window_size": 2}},
}
EXPERIMENT = {"model": {"name": "mobilenetv2"}, "train": {"epochs": 1}, "data": {"path": ["x"]}}


def trained(config: dict):
    det = build_detector(config)
    # Move BatchNorm statistics away from their defaults so that a lost buffer would show.
    det.train()
    with torch.no_grad():
        det(torch.randn(4, 3, 64, 64))
    return det.eval()


def same_outputs(a, b) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_checkpoint_meta_is_plain_data():
    det = build_detector(CONFIGS["cnn"])
    meta = checkpoint_meta(det, 0.42, EXPERIMENT, val_auc=0.9)
    assert meta["format"] == 1
    assert meta["model"]["name"] == "mobilenetv2" and meta["model"]["attention"] == "cbam"
    assert meta["preprocessing"] == {"input_size": 64, "mean": list(det.mean), "std": list(det.std)}
    assert meta["threshold"] == 0.42
    assert meta["version"] == __version__
    assert isinstance(meta["git_commit"], str) and meta["git_commit"]
    assert meta["experiment"] == EXPERIMENT
    assert meta["class_names"] == ["real", "fake"]
    assert meta["val_auc"] == 0.9
    assert json.loads(json.dumps(meta)) == meta


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_export_safetensors_roundtrip(tmp_path, kind):
    src = trained(CONFIGS[kind])
    meta = checkpoint_meta(src, 0.3, EXPERIMENT)
    path = export_safetensors(src, tmp_path / "out" / "model.safetensors", meta)
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["deepfake_detect"])["threshold"] == 0.3
        assert set(fh.keys()) == set(src.state_dict())
    det = load_checkpoint(path)
    assert not det.training
    assert det.threshold == 0.3
    assert det.checkpoint_meta.experiment == EXPERIMENT
    assert det.preprocessing() == src.preprocessing()
    assert type(det) is type(src) and det.num_classes == src.num_classes
    same_outputs(det, src)


def test_channels_last_detector_exports(tmp_path):
    src = trained(CONFIGS["cnn"]).to(memory_format=torch.channels_last)
    path = export_safetensors(src, tmp_path / "m.safetensors", checkpoint_meta(src))
    same_outputs(load_checkpoint(path), src)


def test_lightning_checkpoint_roundtrip(tmp_path):
    src = trained(CONFIGS["cnn"])
    meta = checkpoint_meta(src, 0.61, EXPERIMENT)
    ckpt = {
        "epoch": 2,
        "global_step": 10,
        # The training module also holds the loss, whose buffers are not detector weights.
        "state_dict": {**{f"model.{k}": v for k, v in src.state_dict().items()},
                       "criterion.pos_weight": torch.tensor([2.0])},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001}]}],
        "deepfake_detect": meta,
    }
    torch.save(ckpt, tmp_path / "best.ckpt")
    # Everything in it must load without unpickling arbitrary objects.
    torch.load(tmp_path / "best.ckpt", weights_only=True)
    det = load_checkpoint(tmp_path / "best.ckpt")
    assert det.threshold == 0.61
    assert det.checkpoint_meta.model == meta["model"]
    same_outputs(det, src)
    # The same file also serves as detector weights for a matching config.
    same_outputs(build_detector(CONFIGS["cnn"], weights=tmp_path / "best.ckpt").eval(), src)


def test_local_pretrained_path_is_not_needed_to_load(tmp_path):
    src = trained(CONFIGS["cnn"])
    meta = checkpoint_meta(src)
    meta["model"]["pretrained"] = str(tmp_path / "gone.safetensors")
    meta["model"]["allow_download"] = True
    path = export_safetensors(src, tmp_path / "m.safetensors", meta)
    same_outputs(load_checkpoint(path), src)


def test_package_level_exports():
    assert deepfake_detect.load_checkpoint is load_checkpoint
    assert deepfake_detect.build_detector is build_detector
    assert deepfake_detect.__version__ == "0.1.0"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_foreign_file_is_not_a_checkpoint(tmp_path, suffix):
    sd = build_detector(CONFIGS["cnn"]).state_dict()
    path = tmp_path / f"foreign{suffix}"
    if suffix == ".safetensors":
        save_file(sd, path)
    else:
        torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "not a deepfake-detect checkpoint" in msg and "weights=" in msg


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    src = build_detector(CONFIGS["cnn"])
    newer = {**checkpoint_meta(src), "format": 99}
    export_safetensors(src, tmp_path / "newer.safetensors", newer)
    with pytest.raises(CheckpointError, match="newer deepfake-detect"):
        load_checkpoint(tmp_path / "newer.safetensors")
    unknown = checkpoint_meta(src)
    unknown["model"]["name"] = "no_such_detector"
    export_safetensors(src, tmp_path / "unknown.safetensors", unknown)
    with pytest.raises(CheckpointError, match="no_such_detector"):
        load_checkpoint(tmp_path / "unknown.safetensors")


def test_checkpoint_with_mismatched_weights(tmp_path):
    src = build_detector(CONFIGS["cnn"])
    meta = checkpoint_meta(src)
    meta["model"]["num_classes"] = 2
    export_safetensors(src, tmp_path / "bad.safetensors", meta)
    with pytest.raises(CheckpointError, match="model.num_classes: 1"):
        load_checkpoint(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("key, value, words", [
    ("threshold", 2.0, "threshold"), ("threshold", float("nan"), "threshold"),
    ("temperature", -1.0, "temperature"), ("temperature", "hot", "temperature"),
    ("experiment", "not a mapping", "experiment"), ("format", 99, "newer deepfake-detect"),
])
def test_checkpoint_meta_is_typed_and_validated_when_read(tmp_path, key, value, words):
    """A stored meta that was edited or damaged fails on reading, in one line naming the key,
    never later as a wrong threshold or a traceback."""
    from deepfake_detect.models.checkpoint_meta import CheckpointMeta

    src = build_detector(CONFIGS["cnn"])
    good = export_safetensors(src, tmp_path / "good.safetensors", checkpoint_meta(src, 0.3))
    meta = load_checkpoint(good).checkpoint_meta
    assert isinstance(meta, CheckpointMeta) and meta.threshold == 0.3 and meta.temperature == 1.0
    assert meta.model["name"] == src.config.name and meta.eval_settings == {}
    bad = checkpoint_meta(src)
    bad[key] = value
    path = export_safetensors(src, tmp_path / "bad.safetensors", bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert words in message and "bad.safetensors" in message and "\n" not in message
