"""Safe reading of weight files, pretrained backbone weights and strict detector loading."""

from __future__ import annotations

import argparse
import fractions
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from deepfake_detect.errors import CheckpointError
from deepfake_detect.models import build_detector, load_detector_weights, read_state_dict
from deepfake_detect.models import weights as weights_mod

torch.set_num_threads(1)

class Evil:
    """Unpickling this would run code (creating a marker file)."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def small_sd() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "conv.bias": torch.randn(4),
        "fc.weight": torch.randn(2, 4),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def tiny_mobilenet(**overrides):
    return build_detector({"name": "mobilenetv2", "input_size": 64, **overrides})


# -- read_state_dict -----------------------------------------------------------------------------


def test_read_safetensors(tmp_path):
    sd = small_sd()
    save_file(sd, tmp_path / "w.safetensors")
    assert_same(read_state_dict(tmp_path / "w.safetensors"), sd)


def test_safetensors_detected_by_content(tmp_path):
    sd = small_sd()
    save_file(sd, tmp_path / "w.bin")
    assert_same(read_state_dict(tmp_path / "w.bin"), sd)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"model_state_dict": sd},
        lambda sd: {"module": sd},
        lambda sd: {"model": {"state_dict": sd}},
    ],
)
def test_read_torch_containers(tmp_path, wrap):
    sd = small_sd()
    torch.save(wrap(sd), tmp_path / "w.pth")
    assert_same(read_state_dict(tmp_path / "w.pth"), sd)


def test_prefixes_are_stripped(tmp_path):
    sd = small_sd()
    torch.save({f"module.encoder.{k}": v for k, v in sd.items()}, tmp_path / "w.pt")
    assert_same(read_state_dict(tmp_path / "w.pt", strip_prefix=["encoder."]), sd)
    assert set(read_state_dict(tmp_path / "w.pt")) == {f"encoder.{k}" for k in sd}


def test_numpy_values_in_checkpoints_are_allowed(tmp_path):
    sd = small_sd()
    torch.save({"state_dict": sd, "best_acc": np.float64(0.93), "hist": np.arange(3),
                "step": np.int64(7)}, tmp_path / "w.pth.tar")
    assert_same(read_state_dict(tmp_path / "w.pth.tar"), sd)


def test_pickled_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setattr(Evil, "marker", str(marker))
    torch.save({"state_dict": small_sd(), "extra": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "evil.pth")
    msg = str(err.value)
    assert "evil.pth" in msg
    assert "never runs pickled code" in msg
    assert "builtins.getattr" in msg and "pathlib.PosixPath" in msg  # the refused globals
    # Says how to re-save the weights, never how to bypass the refusal; one line.
    assert "safetensors.torch.save_file" in msg and "weights_only=False" not in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_custom_class_is_named(tmp_path):
    torch.save({"state_dict": small_sd(), "args": fractions.Fraction(1, 3)}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="fractions.Fraction"):
        read_state_dict(tmp_path / "a.pth")


def test_argparse_namespace_is_allowed(tmp_path):
    # Official FSFM checkpoints keep their training arguments in one.
    torch.save({"state_dict": small_sd(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "a.pth")
    assert set(read_state_dict(tmp_path / "a.pth")) == set(small_sd())


def test_allow_safe_globals(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "SAFE_GLOBALS", list(weights_mod.SAFE_GLOBALS))
    torch.save({"state_dict": small_sd(), "args": fractions.Fraction(1, 3)}, tmp_path / "a.pth")
    weights_mod.allow_safe_globals(fractions.Fraction)
    assert set(read_state_dict(tmp_path / "a.pth")) == set(small_sd())


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="broken.pth"):
        read_state_dict(tmp_path / "broken.pth")
    torch.save({"epoch": 3, "name": "x"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "empty.pth")


# -- pretrained backbone weights -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_backbone_from_local_file(tmp_path, suffix):
    # A timm model with its ImageNet classifier, saved under a prefix as real releases often are.
    src = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
    sd = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        save_file(sd, path)
    det = tiny_mobilenet(pretrained=str(path), strip_prefix=["encoder."])
    loaded = det.backbone.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("classifier."):
            torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    assert det.pretrained_report["missing"] == []
    assert det.pretrained_report["unexpected"] == []  # classifier dropped


def test_pretrained_prefix_hint(tmp_path):
    src = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    save_file({f"encoder.{k}": v for k, v in src.state_dict().items()}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="'encoder.'"):
        tiny_mobilenet(pretrained=str(tmp_path / "b.safetensors"))


def test_pretrained_wrong_architecture(tmp_path):
    src = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(src.state_dict(), tmp_path / "r.safetensors")
    with pytest.raises(CheckpointError) as err:
        tiny_mobilenet(pretrained=str(tmp_path / "r.safetensors"))
    msg = str(err.value)
    assert "first missing" in msg and "first unexpected" in msg and "different architecture" in msg


def test_pretrained_shape_mismatch_is_not_resized(tmp_path):
    src = build_detector({"name": "vit_base", "input_size": 32,
                          "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}})
    save_file(src.backbone.state_dict(), tmp_path / "v.safetensors")
    with pytest.raises(CheckpointError, match="pos_embed"):
        build_detector({"name": "vit_base", "input_size": 64,
                        "pretrained": str(tmp_path / "v.safetensors"),
                        "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}})


# -- detector weights ----------------------------------------------------------------------------


def test_load_detector_weights_roundtrip(tmp_path):
    src = tiny_mobilenet().eval()
    torch.save(src.state_dict(), tmp_path / "d.pth")
    dst = load_detector_weights(tiny_mobilenet().eval(), tmp_path / "d.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_lightning_style_prefix_and_build_with_weights(tmp_path):
    src = tiny_mobilenet().eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}, "epoch": 1},
               tmp_path / "l.ckpt")
    dst = build_detector({"name": "mobilenetv2", "input_size": 64}, weights=tmp_path / "l.ckpt")
    dst.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_adapt_state_dict_is_used(tmp_path, monkeypatch):
    src = tiny_mobilenet()
    save_file({f"net.{k}": v.contiguous() for k, v in src.state_dict().items()},
              tmp_path / "f.safetensors")
    dst = tiny_mobilenet()
    dst.adapt_state_dict = lambda sd: {k.removeprefix("net."): v for k, v in sd.items()}
    load_detector_weights(dst, tmp_path / "f.safetensors")
    torch.testing.assert_close(dst.head.fc.weight, src.head.fc.weight)


def test_wrong_architecture_detector_weights(tmp_path):
    src = build_detector({"name": "timm", "timm_name": "resnet10t", "input_size": 64})
    save_file(src.state_dict(), tmp_path / "r.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_detector_weights(tiny_mobilenet(), tmp_path / "r.safetensors")
    msg = str(err.value)
    assert "first missing: backbone." in msg and "first unexpected: backbone." in msg
    assert "different architecture" in msg and "mobilenetv2" in msg


def test_one_vs_two_logit_head_mismatch(tmp_path):
    src = tiny_mobilenet(num_classes=1)
    save_file(src.state_dict(), tmp_path / "one.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_detector_weights(tiny_mobilenet(num_classes=2), tmp_path / "one.safetensors")
    msg = str(err.value)
    assert "head.fc.weight" in msg and "model.num_classes: 1" in msg and "sigmoid" in msg


def test_backbone_only_file_as_detector_weights(tmp_path):
    src = tiny_mobilenet()
    save_file({k: v for k, v in src.state_dict().items() if k.startswith("backbone.")},
              tmp_path / "bb.safetensors")
    with pytest.raises(CheckpointError, match="model.pretrained"):
        load_detector_weights(tiny_mobilenet(), tmp_path / "bb.safetensors")
