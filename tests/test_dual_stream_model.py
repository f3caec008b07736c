"""The dual-stream video detector: ConvLSTM, streams, fusion, freezing, checkpoints, presets."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from deepfake_detect.config.loading import load_config
from deepfake_detect.config.schema import StrategyConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.models import (
    build_detector,
    checkpoint_meta,
    export_safetensors,
    list_detectors,
    load_checkpoint,
    validate_model_config,
)
from deepfake_detect.models.convlstm import ConvLSTM, ConvLSTMCell
from deepfake_detect.models.dual_stream import AttentionFusion, DualStreamDetector
from deepfake_detect.models.strategies import apply_strategy

from conftest import REPO, TINY_DUAL_STREAM

# test_efficientnet: a real EfficientNet (BatchNormAct, blocks, conv_head) of 0.1M parameters.
TINY = {
    **TINY_DUAL_STREAM,
    "hq": {"timm_name": "test_efficientnet", "size": 64},
    "lq": {"timm_name": "test_efficientnet", "size": 32},
    "dropout": [0.5, 0.3],
}


def tiny(**overrides) -> DualStreamDetector:
    torch.manual_seed(0)
    return build_detector({**copy.deepcopy(TINY), **overrides})


def clips(b: int = 2, t: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- ConvLSTM ------------------------------------------------------------------------------------


def test_convlstm_shapes():
    lstm = ConvLSTM(5, [8, 4], kernel_size=3)
    outputs, last = lstm(torch.randn(2, 6, 5, 7, 9))
    assert outputs.shape == (2, 6, 4, 7, 9)
    assert last.shape == (2, 4, 7, 9)
    torch.testing.assert_close(last, outputs[:, -1])
    h, c = ConvLSTMCell(5, 8, 5)(torch.randn(2, 5, 7, 9))
    assert h.shape == c.shape == (2, 8, 7, 9)
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(5, 8, 4)
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        lstm(torch.randn(2, 5, 7, 9))


def _reference_step(cell: ConvLSTMCell, x, h, c):
    # The textbook equations, written out independently of the module.
    w, pad = cell.gates.weight, cell.kernel_size // 2
    z = F.conv2d(torch.cat([x, h], 1), w, cell.gates.bias, padding=pad)
    n = cell.hidden_channels
    i, f, o = z[:, :n].sigmoid(), z[:, n : 2 * n].sigmoid(), z[:, 2 * n : 3 * n].sigmoid()
    g = z[:, 3 * n :].tanh()
    c = f * c + i * g
    return o * c.tanh(), c


def test_convlstm_follows_the_lstm_equations_layer_by_layer():
    torch.manual_seed(0)
    lstm = ConvLSTM(3, [6, 5], kernel_size=3)
    x = torch.randn(2, 4, 3, 5, 5)
    seq = x
    for cell in lstm.cells:
        h = c = torch.zeros(2, cell.hidden_channels, 5, 5)
        hs = []
        for t in range(x.shape[1]):
            h, c = _reference_step(cell, seq[:, t], h, c)
            hs.append(h)
            # The cell's own one-step forward (one conv over [x, h]) agrees as well.
            if t == 0:
                torch.testing.assert_close(cell(seq[:, 0])[0], h)
        seq = torch.stack(hs, 1)
    outputs, _ = lstm(x)
    torch.testing.assert_close(outputs, seq, atol=1e-6, rtol=1e-5)
    # Forget-gate bias starts at 1, the others at 0.
    bias = lstm.cells[0].gates.bias
    assert torch.equal(bias[6:12], torch.ones(6)) and not bias[:6].any() and not bias[12:].any()


def test_shuffling_frames_changes_the_output():
    torch.manual_seed(0)
    lstm = ConvLSTM(4, [8, 4])
    x = torch.randn(1, 6, 4, 5, 5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        _, last = lstm(x)
        _, shuffled = lstm(x[:, perm])
    assert (last - shuffled).abs().max() > 1e-3

    det = tiny(fusion="concat").eval()
    x = clips(1, 4)
    with torch.no_grad():
        a = torch.cat(det.stream_features(x), 1)
        b = torch.cat(det.stream_features(x[:, [2, 0, 3, 1]]), 1)
    # Relative: a randomly initialised backbone in eval mode gives small features.
    assert (a - b).norm() > 1e-2 * a.norm()


def test_identical_frames_give_a_state_trajectory_fixed_per_step():
    torch.manual_seed(0)
    lstm = ConvLSTM(4, [8, 4])
    frame = torch.randn(2, 1, 4, 5, 5)
    seq = frame.expand(2, 6, 4, 5, 5)
    with torch.no_grad():
        outputs, _ = lstm(seq)
        again, _ = lstm(seq)
        torch.testing.assert_close(again, outputs, atol=0, rtol=0)
        for t in range(1, 7):
            _, fresh = lstm(seq[:, :t])  # a fresh run of t steps on the same frame
            torch.testing.assert_close(fresh, outputs[:, t - 1], atol=1e-6, rtol=1e-5)
    # The state keeps moving with the step although the input does not: there is memory.
    assert (outputs[:, 1] - outputs[:, 0]).abs().max() > 1e-3


# -- detector -------------------------------------------------------------------------------------


def test_registered_with_preprocessing_and_sequence():
    assert "dual_stream" in list_detectors()
    det = tiny(sequence={"frames": 8, "stride": 2})
    pre = det.preprocessing()
    assert pre["input_size"] == 64  # the HQ stream's size
    assert pre["mean"] == list(timm.get_pretrained_cfg("test_efficientnet").mean)
    assert pre["sequence"] == {"frames": 8, "stride": 2, "eval_clips": 4}
    assert det.num_classes == 1 and det.fake_index == 0


def test_full_size_defaults_build_b4_plus_b0():
    with torch.device("meta"):
        det = build_detector({"name": "dual_stream"})
    assert det.preprocessing()["sequence"] == {"frames": 10, "stride": 3, "eval_clips": 4}
    assert det.input_size == 224 and det.lq_size == 112 and det.num_classes == 1
    assert det.temporal["hq"].cells[0].input_channels == 1792  # B4 conv_head
    assert det.temporal["lq"].cells[0].input_channels == 1280  # B0 conv_head
    assert det.temporal["hq"].filters == [256, 128]
    widths = [b.fc.out_features for b in det.head.blocks] + [det.head.out.out_features]
    assert widths == [512, 256, 128, 1]
    assert [b.drop.p for b in det.head.blocks] == [0.5, 0.3, 0.0]


@pytest.mark.parametrize("fusion", ["attention", "concat", "gated"])
def test_forward_shape_for_each_fusion(fusion):
    det = tiny(fusion=fusion).eval()
    with torch.no_grad():
        out = det(clips(2, 3))
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    assert det.probabilities(out).shape == (2,)


def test_attention_weights_start_equal_and_sum_to_one():
    det = tiny(fusion="attention", fusion_dim=6)
    assert isinstance(det.fusion, AttentionFusion) and det.fusion.out_features == 6
    torch.testing.assert_close(det.fusion.weights(), torch.tensor([0.5, 0.5]))
    det.fusion.logits.data = torch.tensor([2.0, -1.0])
    w = det.fusion.weights()
    assert w.sum().item() == pytest.approx(1.0) and w[0] > w[1]


def test_two_class_output_and_any_clip_length():
    det = tiny(num_classes=2).eval()
    with torch.no_grad():
        assert det(clips(1, 5)).shape == (1, 2)
        assert det(clips(1, 1)).shape == (1, 2)
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        det(torch.randn(2, 3, 64, 64))


def test_lq_stream_gets_the_downscaled_frames():
    det = tiny().eval()
    seen = {}
    for key in ("hq", "lq"):
        det.backbone[key].conv_stem.register_forward_pre_hook(
            lambda m, args, key=key: seen.__setitem__(key, args[0].detach().clone())
        )
    x = clips(2, 3)
    with torch.no_grad():
        det(x)
    assert seen["hq"].shape == (6, 3, 64, 64)
    assert seen["lq"].shape == (6, 3, 32, 32)
    expected = F.interpolate(x.flatten(0, 1), size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(seen["lq"], expected)


def test_head_parameter_names_cover_everything_but_the_backbones():
    det = tiny(reduce_channels=6, fusion="gated")
    head = det.head_parameter_names()
    names = {n for n, _ in det.named_parameters()}
    assert not any(n.startswith("backbone.") for n in head)
    assert head == {n for n in names if not n.startswith("backbone.")}
    for part in ("reduce.hq.", "temporal.hq.cells.0.", "temporal.lq.cells.1.", "fusion.gate.",
                 "fusion.proj.lq.", "head.blocks.0.fc.", "head.out."):
        assert any(n.startswith(part) for n in head), part
    # The generic feature_extractor strategy trains exactly these and freezes the backbones.
    apply_strategy(det, StrategyConfig(name="feature_extractor"))
    assert {n for n, p in det.named_parameters() if p.requires_grad} == head
    assert det.frozen_children == ("backbone",)


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers() if "running" in n or "num_batches" in n}


def test_freeze_backbones_trains_only_the_rest_and_keeps_bn_statistics():
    det = tiny(freeze_backbones=True)
    trainable = {n for n, p in det.named_parameters() if p.requires_grad}
    assert trainable == det.head_parameter_names()
    before = _bn_buffers(det.backbone)
    weights = {n: p.clone() for n, p in det.backbone.named_parameters()}
    lstm_before = det.temporal["hq"].cells[0].gates.weight.clone()
    assert before

    det.train()
    bns = [m for m in det.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns) and det.head.training
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.1)
    loss = F.binary_cross_entropy_with_logits(det(clips(2, 3))[:, 0], torch.tensor([0.0, 1.0]))
    loss.backward()
    opt.step()

    assert all(p.grad is None for p in det.backbone.parameters())
    for n, b in _bn_buffers(det.backbone).items():
        assert torch.equal(b, before[n]), n
    for n, p in det.backbone.named_parameters():
        assert torch.equal(p, weights[n]), n
    assert not torch.equal(det.temporal["hq"].cells[0].gates.weight, lstm_before)


def test_model_freeze_backbone_works_too():
    det = tiny(freeze={"backbone": True}).train()
    assert not any(p.requires_grad for p in det.backbone.parameters())
    assert not any(m.training for m in det.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_grad_checkpointing_gives_the_same_output_and_gradients():
    plain = tiny(dropout=[])
    ckpt = tiny(dropout=[], grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.backbone["hq"].grad_checkpointing and not plain.backbone["hq"].grad_checkpointing
    x = clips(2, 2)
    outs, grads = [], []
    for det in (plain, ckpt):
        det.train()
        out = det(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in det.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_grad_checkpointing_unsupported_is_a_config_error(monkeypatch):
    from timm.models.efficientnet import EfficientNet

    def refuse(self, enable=True):
        raise NotImplementedError

    monkeypatch.setattr(EfficientNet, "set_grad_checkpointing", refuse)
    with pytest.raises(ConfigError, match="model.grad_checkpointing"):
        tiny(grad_checkpointing=True)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, monkeypatch):
    monkeypatch.setattr("deepfake_detect.runinfo.git_commit", lambda: "test")  # git is slow here
    # Per-stream pretrained weights are read at build ...
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", num_classes=0)
    weights = tmp_path / "hq.pth"
    torch.save(source.state_dict(), weights)
    det = tiny(hq={"timm_name": "test_efficientnet", "size": 64, "pretrained": str(weights)},
               fusion="gated").eval()
    torch.testing.assert_close(det.backbone["hq"].conv_stem.weight, source.conv_stem.weight)
    assert det.pretrained_report["hq"]["loaded"] > 0 and "lq" not in det.pretrained_report

    path = export_safetensors(det, tmp_path / "ds.safetensors", checkpoint_meta(det))
    weights.unlink()  # ... but not when the checkpoint's weights follow
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DualStreamDetector)
    assert loaded.preprocessing() == det.preprocessing()
    x = clips(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), det(x), atol=0, rtol=0)


@pytest.mark.parametrize("key", ["hq", "lq"])
def test_wrong_backbone_name_is_a_config_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=f"model.{key}.timm_name") as err:
        tiny(**{key: {"timm_name": "efficientnet_b9", "size": 64}})
    assert "efficientnet_b" in str(err.value)  # close names are suggested
    with pytest.raises(ConfigError, match=f"model.{key}.timm_name.*CNN"):
        tiny(**{key: {"timm_name": "test_vit", "size": 64}})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"pretrained": "b4.pth"}, "model.hq.pretrained"),
        ({"input_size": 96}, "model.hq.size"),
        ({"dropout": [0.5, 0.3, 0.2]}, "model.dropout"),
        ({"kernel_size": 4}, "model.kernel_size"),
        ({"fusion": "sum"}, "model.fusion"),
        ({"convlstm_filters": []}, "model.convlstm_filters"),
        ({"sequence": {"frames": 0}}, "model.sequence.frames"),
        ({"hq": {"timm_name": "efficientnet_b4", "szie": 224}}, "model.hq.szie"),
    ],
)
def test_bad_config_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_model_config({**TINY, **overrides})


def test_partial_stream_settings_keep_the_stream_defaults():
    cfg = validate_model_config({"name": "dual_stream", "hq": {"timm_name": "efficientnet_b5"},
                                 "lq": {"size": 96}})
    assert (cfg.hq.timm_name, cfg.hq.size) == ("efficientnet_b5", 224)
    assert (cfg.lq.timm_name, cfg.lq.size) == ("efficientnet_b0", 96)


# -- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hq", "lq", "frames"),
    [
        ("dual_stream", "efficientnet_b4", "efficientnet_b0", 10),
        ("dual_stream_fast", "efficientnet_b0", "efficientnet_b0", 8),
        ("dual_stream_accurate", "efficientnet_b5", "efficientnet_b1", 12),
    ],
)
def test_presets(name, hq, lq, frames):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    model = validate_model_config(cfg.model)
    assert (model.hq.timm_name, model.lq.timm_name, model.sequence.frames) == (hq, lq, frames)
    assert (model.hq.size, model.lq.size, model.num_classes) == (224, 112, 1)
    assert model.convlstm_filters == [256, 128] and model.fusion == "attention"
    assert cfg.data.batch_size == 12 and cfg.train.optimizer.lr == 1e-4
    assert cfg.train.loss.name == "bce" and cfg.train.gradient_clip_val == 1.0
    assert cfg.train.early_stopping_patience == 10 and cfg.train.monitor == "val_loss"
    sched = cfg.train.scheduler
    assert (sched.name, sched.factor, sched.patience) == ("plateau", 0.5, 3)
    with torch.device("meta"):
        det = build_detector(model)
    assert det.preprocessing()["sequence"]["frames"] == frames
