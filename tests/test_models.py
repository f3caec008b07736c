"""Detector construction, forward passes, heads, attention blocks and freezing."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from deepfake_detect.errors import ConfigError
from deepfake_detect.models import build_detector, list_detectors, validate_model_config
from deepfake_detect.models.attention import CBAM, SqueezeExcite
from deepfake_detect.models.heads import HeadConfig, LinearHead, MLPHead, build_head
from deepfake_detect.models.timm_detector import TimmDetector

torch.set_num_threads(1)

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_SWIN = {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1, 1, 2, 2], "window_size": 2}

# name -> (timm architecture, default input size, default mean)
EXPECTED = {
    "xception": ("legacy_xception", 299, (0.5, 0.5, 0.5)),
    "mobilenetv2": ("mobilenetv2_100", 224, (0.485, 0.456, 0.406)),
    "efficientnet_b0": ("efficientnet_b0", 224, (0.485, 0.456, 0.406)),
    "efficientnet_b1": ("efficientnet_b1", 240, None),
    "efficientnet_b2": ("efficientnet_b2", 256, None),
    "efficientnet_b3": ("efficientnet_b3", 288, None),
    "efficientnet_b4": ("efficientnet_b4", 320, None),
    "efficientnet_b5": ("efficientnet_b5", 448, None),
    "efficientnet_b6": ("efficientnet_b6", 528, None),
    "efficientnet_b7": ("efficientnet_b7", 600, None),
    "swin_base": ("swin_base_patch4_window7_224", 224, (0.485, 0.456, 0.406)),
    "vit_base": ("vit_base_patch16_224", 224, (0.5, 0.5, 0.5)),
}

# Small enough to run a forward pass quickly at 64 px.
TINY = {
    "mobilenetv2": {},
    "efficientnet_b0": {},
    "xception": {},
    "vit_base": {"backbone_kwargs": TINY_VIT},
    "swin_base": {"backbone_kwargs": TINY_SWIN},
}


def tiny(name: str, **overrides) -> TimmDetector:
    return build_detector({"name": name, "input_size": 64, **TINY[name], **overrides})


def test_registry_lists_builtins():
    assert set(EXPECTED) | {"timm"} <= set(list_detectors())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_builtin_builds_full_size(name):
    # The meta device builds the real architecture without allocating or initialising weights.
    with torch.device("meta"):
        det = build_detector({"name": name})
    arch, size, mean = EXPECTED[name]
    assert isinstance(det, TimmDetector)
    assert det.timm_name == arch
    assert det.input_size == size
    if mean is not None:
        assert det.mean == pytest.approx(mean)
    assert det.head.fc.out_features == 2
    assert det.head.fc.in_features == det.feature_dim


def test_legacy_xception_is_a_timm_model():
    assert timm.is_model("legacy_xception")


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("num_classes", [1, 2])
def test_forward_shapes_and_probabilities(name, num_classes):
    det = tiny(name, num_classes=num_classes).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = det(x)
    assert logits.shape == (3, num_classes)
    proba = det.predict_proba(x)
    assert proba.shape == (3,)
    assert torch.all((proba >= 0) & (proba <= 1))
    expected = torch.sigmoid(logits[:, 0]) if num_classes == 1 else torch.softmax(logits, 1)[:, 1]
    torch.testing.assert_close(proba, expected)


def test_predict_proba_respects_fake_index():
    det = tiny("mobilenetv2", fake_index=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = det(x)
    torch.testing.assert_close(det.predict_proba(x), torch.softmax(logits, 1)[:, 0])


def test_full_size_efficientnet_b7_forward_once():
    det = build_detector({"name": "efficientnet_b7"}).eval()
    assert det.input_size == 600
    with torch.no_grad():
        assert det(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_config_overrides_preprocessing():
    det = tiny("xception", mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    assert det.preprocessing() == {
        "input_size": 64, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]
    }


def test_vit_input_size_sets_img_size():
    det = build_detector({"name": "vit_base", "input_size": 32, "backbone_kwargs": TINY_VIT})
    assert det.input_size == 32
    assert det(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_generic_timm_detector():
    det = build_detector({"name": "timm", "timm_name": "mobilenetv3_small_050", "input_size": 64})
    assert det.timm_name == "mobilenetv3_small_050"
    # MobileNetV3 has a conv after pooling, so the head width differs from the feature map.
    assert det.feature_dim == det.head.fc.in_features == det.backbone.head_hidden_size
    assert det(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_generic_timm_detector_requires_name():
    with pytest.raises(ConfigError, match="timm_name"):
        validate_model_config({"name": "timm"})


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ConfigError, match="efficientnet_b0") as err:
        build_detector({"name": "timm", "timm_name": "efficentnet_b0"})
    assert "model.timm_name" in str(err.value)


def test_hub_names_are_not_fetched():
    with pytest.raises(ConfigError, match="not a timm architecture"):
        build_detector({"name": "timm", "timm_name": "hf-hub:timm/resnet18.a1_in1k"})


def test_backbone_kwargs_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.num_classes"):
        validate_model_config({"name": "mobilenetv2", "backbone_kwargs": {"num_classes": 3}})
    with pytest.raises(ConfigError, match="model.backbone_kwargs"):
        build_detector({"name": "mobilenetv2", "backbone_kwargs": {"no_such_arg": 1}})


def test_dropout_rates_reach_timm():
    det = tiny("efficientnet_b0", drop_rate=0.2, drop_path_rate=0.1)
    assert det.backbone.drop_rate == 0.2
    with pytest.raises(ConfigError, match="drop_path_rate"):
        tiny("xception", drop_path_rate=0.1)


def test_never_downloads_unless_allowed(monkeypatch):
    calls = []
    real = timm.create_model

    def spy(name, pretrained=False, **kw):
        calls.append(pretrained)
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", spy)
    build_detector({"name": "mobilenetv2"})
    build_detector({"name": "mobilenetv2", "allow_download": True})
    assert calls == [False, True]


# -- heads ---------------------------------------------------------------------------------------


def test_linear_head():
    head = build_head(HeadConfig(dropout=0.2), 16, 2)
    assert isinstance(head, LinearHead)
    assert isinstance(head.drop, nn.Dropout)
    assert head(torch.randn(4, 16)).shape == (4, 2)
    assert head.fc.weight.std().item() < 0.05  # small init


def test_mlp_head_bn_dropout_residual():
    cfg = HeadConfig(type="mlp", hidden=[32, 32, 8], batch_norm=True, dropout=0.1, residual=True,
                     activation="gelu")
    head = build_head(cfg, 16, 1)
    assert isinstance(head, MLPHead)
    assert [b.residual for b in head.blocks] == [False, True, False]
    assert all(isinstance(b.norm, nn.BatchNorm1d) for b in head.blocks)
    assert all(b.fc.bias is None for b in head.blocks)
    assert isinstance(head.blocks[0].act, nn.GELU)
    x = torch.randn(4, 16)
    out = head.train()(x)
    assert out.shape == (4, 1)
    out.sum().backward()
    assert head.blocks[0].fc.weight.grad is not None
    head.eval()
    torch.testing.assert_close(head(x), head(x))  # dropout off in eval


def test_head_config_validation():
    with pytest.raises(ValueError):
        HeadConfig(type="mlp", hidden=[])
    with pytest.raises(ValueError):
        HeadConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="model.head.activation"):
        validate_model_config({"name": "mobilenetv2", "head": {"activation": "tanh"}})


def test_detector_with_mlp_head():
    det = tiny("mobilenetv2", head={"type": "mlp", "hidden": [64], "batch_norm": True})
    assert isinstance(det.head, MLPHead)
    assert det(torch.randn(2, 3, 64, 64)).shape == (2, 2)


# -- attention -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [SqueezeExcite(32, 4), CBAM(32, 4, spatial_kernel=7)])
def test_attention_preserves_shape_and_starts_as_identity(block):
    x = torch.randn(2, 32, 5, 7)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)  # zero-initialised gates
    # After a perturbation the block re-weights features, also on channels_last input.
    for p in block.parameters():
        nn.init.normal_(p, std=0.5)
    y = block(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    y.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("kind, cls", [("se", SqueezeExcite), ("cbam", CBAM)])
def test_detector_attention_on_cnn(kind, cls):
    det = tiny("efficientnet_b0", attention=kind, attention_reduction=8)
    assert isinstance(det.attention, cls)
    assert det(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    assert any(n.startswith("attention.") for n in det.head_parameter_names())


@pytest.mark.parametrize("name", ["vit_base", "swin_base"])
def test_attention_on_transformer_is_a_config_error(name):
    with pytest.raises(ConfigError, match="CNN feature maps"):
        tiny(name, attention="se")


def test_channels_last_forward_matches():
    det = tiny("mobilenetv2", attention="cbam").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = det(x)
        det = det.to(memory_format=torch.channels_last)
        out = det(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_grad_checkpointing():
    det = tiny("mobilenetv2", grad_checkpointing=True).train()
    det(torch.randn(2, 3, 64, 64)).sum().backward()
    assert det.backbone.conv_stem.weight.grad is not None
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        tiny("xception", grad_checkpointing=True)


# -- freezing ------------------------------------------------------------------------------------


def _backward(det: nn.Module) -> None:
    det.train()
    det(torch.randn(2, 3, 64, 64)).sum().backward()


def test_freeze_backbone():
    det = tiny("mobilenetv2", freeze={"backbone": True})
    assert not any(p.requires_grad for p in det.backbone.parameters())
    assert all(p.requires_grad for p in det.head.parameters())
    _backward(det)
    assert all(p.grad is None for p in det.backbone.parameters())
    assert det.head.fc.weight.grad is not None
    bns = [m for m in det.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert det.head.training


def test_freeze_backbone_without_norm_eval():
    det = tiny("mobilenetv2", freeze={"backbone": True, "norm_eval": False}).train()
    assert all(m.training for m in det.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_freeze_prefixes():
    det = tiny("mobilenetv2", freeze={"prefixes": ["backbone.conv_stem", "backbone.blocks.0"]})
    frozen = {n for n, p in det.named_parameters() if not p.requires_grad}
    assert frozen
    assert all(n.startswith(("backbone.conv_stem.", "backbone.blocks.0.")) for n in frozen)
    assert "backbone.blocks.1.0.conv_pw.weight" not in frozen
    _backward(det)
    params = dict(det.named_parameters())
    assert all(params[n].grad is None for n in frozen)
    assert params["backbone.blocks.1.0.conv_pw.weight"].grad is not None


def test_freeze_prefix_respects_name_components():
    det = tiny("efficientnet_b0", freeze={"prefixes": ["backbone.blocks.1"]})
    frozen = {n for n, p in det.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.blocks.1.") for n in frozen)


def test_bad_freeze_prefix_lists_valid_ones():
    with pytest.raises(ConfigError, match="model.freeze.prefixes") as err:
        tiny("mobilenetv2", freeze={"prefixes": ["backbone.block"]})
    assert "backbone.blocks" in str(err.value)
