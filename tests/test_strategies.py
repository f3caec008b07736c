"""Transfer strategies: what trains, what stays bit-identical, LoRA adapters, feature caching."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import LoraSettings, OptimizerConfig, StrategyConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.models import build_detector, load_checkpoint
from deepfake_detect.models.checkpoint import load_detector
from deepfake_detect.models.strategies import (
    apply_strategy,
    count_parameters,
    has_lora,
    load_adapter,
)
from deepfake_detect.training.optim import param_groups
from deepfake_detect.training.train import train


@pytest.fixture(scope="module")
def fsfm_model(shared):
    folder = shared / "fixtures" / "fsfm"
    return {
        "name": "fsfm",
        "vit": {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 64, "patch_size": 16},
        "pretrained": str(folder / "fsfm_tiny_pretrained.pth"),
    }


class FrozenCheck(Callback):
    """Snapshots frozen parameters and all buffers when fit starts and records what changed."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.changed: list[str] = []
        self.trainable_changed: list[str] = []
        self.backbone_training: list[bool] = []
        self.feature_batches = 0
        self.counts = None

    def on_fit_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        self.start = {n: p.detach().clone() for n, p in model.state_dict().items()}
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        self.frozen |= {n for n, _ in model.named_buffers()}
        self.counts = count_parameters(model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.backbone_training.append(pl_module.model.backbone.training)
        self.feature_batches += int("features" in batch)

    def on_fit_end(self, trainer, pl_module) -> None:
        now = pl_module.model.state_dict()
        for name, before in self.start.items():
            same = torch.equal(before, now[name])
            if name in self.frozen and not same:
                self.changed.append(name)
            if name not in self.frozen and not same:
                self.trainable_changed.append(name)


def _run(tmp_path, dataset, model, strategy, epochs=2, **extra):
    base = tiny_config(dataset, tmp_path / "runs", epochs=epochs)
    base["model"] = model
    base["strategy"] = strategy
    base["train"]["optimizer"] = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value}
    check = FrozenCheck()
    result = train(load_config(base=base), out=tmp_path / "run", callbacks=[check])
    return result, check


def test_feature_extractor_trains_only_the_head_and_keeps_bn_statistics(toy_dataset, tmp_path):
    model = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}
    result, check = _run(tmp_path, toy_dataset, model, {"name": "feature_extractor"})
    detector = build_detector(model)
    head = sum(p.numel() for n, p in detector.named_parameters() if n.startswith("head."))
    assert check.counts.trainable == head
    assert check.counts.total == sum(p.numel() for p in detector.parameters())
    # BatchNorm running statistics are buffers: eval mode keeps them bit-identical too.
    assert any("running_mean" in n for n in check.frozen)
    assert check.changed == []
    assert check.trainable_changed and all(n.startswith("head.") for n in check.trainable_changed)
    assert check.backbone_training and not any(check.backbone_training)
    assert result.best_checkpoint is not None


def test_fine_tuning_freezes_layers_and_decays_learning_rates(fsfm_model, toy_dataset, tmp_path):
    strategy = {"name": "fine_tuning", "freeze_layers": ["blocks.0", "patch_embed"],
                "layer_decay": 0.65}
    result, check = _run(tmp_path, toy_dataset, fsfm_model, strategy, epochs=1)
    detector = build_detector(fsfm_model)
    frozen = sum(p.numel() for n, p in detector.named_parameters()
                 if n.startswith(("backbone.blocks.0.", "backbone.patch_embed.")))
    assert frozen > 0
    assert check.counts.trainable == check.counts.total - frozen
    assert check.changed == []
    assert any(n.startswith("backbone.blocks.1.") for n in check.trainable_changed)

    # lr x 0.65^(top - layer): block 1 is layer 2, fc_norm the top layer 3 with the head.
    apply_strategy(detector, StrategyConfig.model_validate(strategy))
    groups = {g["name"]: g for g in param_groups(detector, OptimizerConfig(lr=1e-3, weight_decay=0.05),
                                                 layer_decay=0.65)}
    assert groups["backbone.layer2"]["lr"] == pytest.approx(1e-3 * 0.65)
    assert groups["backbone.layer3_no_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert "backbone.layer1" not in groups  # blocks.0 is frozen
    cls_token = detector.backbone.cls_token
    assert any(p is cls_token for p in groups["backbone.layer0_no_decay"]["params"])


def test_lora_trains_adapters_and_head_and_merges_exactly(fsfm_model, toy_dataset, tmp_path):
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["qkv"]}
    result, check = _run(tmp_path, toy_dataset, fsfm_model, {"name": "peft_lora", "lora": lora})
    dim, depth = 64, 2
    adapters = depth * 4 * (dim + 3 * dim)  # A: r x in, B: out x r, per qkv layer
    head = 2 * dim + 2
    assert check.counts.trainable == adapters + head
    assert check.changed == []  # every base weight, fc_norm included, is untouched
    assert any("lora_B" in n for n in check.trainable_changed)

    best = result.best_checkpoint
    x = torch.randn(3, 3, 64, 64)
    unmerged = load_checkpoint(best, inference=False)
    assert has_lora(unmerged)
    merged = load_checkpoint(best)
    assert not has_lora(merged)
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        reference = unmerged(x)
        assert torch.allclose(merged(x), reference, atol=1e-5)

        # The adapters alone (+ head), on the pretrained base recorded in the config.
        folder = result.run_dir / "adapter"
        assert (folder / "adapter_config.json").is_file()
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size < (result.run_dir / "model.safetensors").stat().st_size / 2
        assert torch.allclose(load_adapter(folder)(x), reference, atol=1e-5)
        assert torch.allclose(load_detector(folder)(x), reference, atol=1e-5)
        export = load_checkpoint(result.run_dir / "model.safetensors")
        assert torch.allclose(export(x), reference, atol=1e-5)


def test_lora_errors_name_the_layers(fsfm_model):
    detector = build_detector({**fsfm_model, "pretrained": None})
    with pytest.raises(ConfigError, match=r"qkv.*fc1|fc1.*qkv"):
        apply_strategy(detector, StrategyConfig(name="peft_lora",
                                                lora=LoraSettings(target_modules=["query"])))
    with pytest.raises(ConfigError, match="blocks.9"):
        apply_strategy(build_detector({**fsfm_model, "pretrained": None}),
                       StrategyConfig(freeze_layers=["blocks.9"]))


def test_feature_cache_gives_the_same_training_as_images(toy_dataset, tmp_path):
    model = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}
    plain, _ = _run(tmp_path / "a", toy_dataset, model, {"name": "feature_extractor"}, epochs=3)
    cached, check = _run(tmp_path / "b", toy_dataset, model,
                         {"name": "feature_extractor", "cache_features": True}, epochs=3)
    # Epochs 2 and 3 are served from the cache (the first fills it).
    assert check.feature_batches > 0
    assert cached.val_metrics["val_loss"] == pytest.approx(plain.val_metrics["val_loss"], abs=1e-5)
    a = load_checkpoint(plain.run_dir / "checkpoints" / "last.ckpt").head.fc.weight
    b = load_checkpoint(cached.run_dir / "checkpoints" / "last.ckpt").head.fc.weight
    assert torch.allclose(a, b, atol=1e-5)


def test_per_class_f1_is_logged_and_selectable(toy_dataset, tmp_path):
    model = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}
    result, _ = _run(tmp_path, toy_dataset, model, {"name": "fine_tuning"}, epochs=1,
                     train={"monitor": "val_f1_real"})
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    row = next(r for r in rows if r.get("val_f1_real"))
    f1_fake, f1_real, macro = (float(row[k]) for k in ("val_f1", "val_f1_real", "val_macro_f1"))
    assert macro == pytest.approx((f1_fake + f1_real) / 2, abs=1e-6)
    assert result.best_score == pytest.approx(f1_real, abs=1e-6)
