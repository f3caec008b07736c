"""Mixup / cutmix (timm's Mixup) on training batches, with the soft-target loss."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import AugmentConfig
from deepfake_detect.data.transforms import augment_is_random, build_mixup
from deepfake_detect.errors import ConfigError
from deepfake_detect.models import build_detector
from deepfake_detect.training.module import DetectorModule
from deepfake_detect.training.train import train


def _module(tmp_path, **augment):
    config = tiny_config(tmp_path, tmp_path / "runs")
    config["data"]["augment"] = {"hflip": 0.0, **augment}
    cfg = load_config(base=config)
    return DetectorModule(build_detector(cfg.model), cfg)


def _step(module, batch_size):
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, logits, labels):
            seen["labels"] = labels
            return logits.sum() * 0

    module.criterion = Spy()
    module.log = lambda *a, **k: None
    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32)
    labels = torch.arange(batch_size) % 2
    module.training_step({"image": x.clone(), "label": labels, "index": torch.arange(batch_size)}, 0)
    return labels, seen["labels"]


def test_off_by_default_and_counts_as_random_augmentation():
    assert build_mixup(AugmentConfig()) is None
    assert build_mixup(AugmentConfig(mixup_alpha=0.8, mixup_prob=0)) is None
    assert augment_is_random(AugmentConfig(hflip=0, mixup_alpha=0.8))
    assert not augment_is_random(AugmentConfig(hflip=0))


@pytest.mark.parametrize("kind", ["mixup_alpha", "cutmix_alpha"])
def test_training_batches_get_soft_targets(tmp_path, kind):
    labels, used = _step(_module(tmp_path, **{kind: 1.0}), 8)
    assert used.dtype == torch.float32 and used.shape == (8,)
    assert ((used >= 0) & (used <= 1)).all()
    # Pairs are mixed with the flipped batch: masses move away from the hard labels.
    assert not torch.equal(used, labels.float())
    assert torch.allclose(used + used.flip(0), torch.ones(8))  # alternating labels mix to 1


def test_odd_batches_are_left_as_they_are(tmp_path):
    labels, used = _step(_module(tmp_path, mixup_alpha=1.0), 7)
    assert torch.equal(used, labels)


def test_training_with_mixup_and_cutmix_runs(toy_dataset, tmp_path):
    config = tiny_config(toy_dataset, tmp_path / "runs", epochs=2)
    config["data"]["augment"].update({"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    result = train(load_config(base=config), out=tmp_path / "run")
    assert result.best_checkpoint is not None and result.val_metrics["val_loss"] > 0


def test_cutmix_is_refused_for_video_clips(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "runs", epochs=1)
    config["model"] = {"name": "dual_stream", "hq": {"timm_name": "test_efficientnet", "size": 32},
                       "lq": {"timm_name": "test_efficientnet", "size": 16},
                       "convlstm_filters": [4], "classifier": [8], "dropout": [0.5]}
    config["data"]["augment"]["cutmix_alpha"] = 1.0
    with pytest.raises(ConfigError, match="cutmix_alpha"):
        train(load_config(base=config), out=tmp_path / "run")
