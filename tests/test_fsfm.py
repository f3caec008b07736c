"""FSFM: both official checkpoint layouts, class order, normalisation file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from deepfake_detect.errors import CheckpointError
from deepfake_detect.models import build_detector, export_safetensors, load_checkpoint
from deepfake_detect.models.checkpoint import checkpoint_meta
from deepfake_detect.models.fsfm import VGGFACE2_MEAN, VGGFACE2_STD
from deepfake_detect.models.weights import read_state_dict


@pytest.fixture(scope="module")
def fsfm(shared):
    folder = shared / "fixtures" / "fsfm"
    expected = torch.load(folder / "fsfm_tiny_expected.pt", weights_only=True)
    vit = expected["vit"]
    cfg = {"name": "fsfm", "vit": {k: vit[k] for k in
                                   ("embed_dim", "depth", "num_heads", "img_size", "patch_size")}}
    return folder, expected, cfg


def test_finetuned_checkpoint_reproduces_official_logits(fsfm):
    folder, expected, cfg = fsfm
    assert expected["vit"]["global_pool"] is True
    det = build_detector(cfg, weights=folder / "fsfm_tiny_finetuned.pth").eval()
    assert det.fake_index == 0  # the official class order: folders sorted, fake < real
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(det.predict_proba(expected["input"]), expected["prob_fake"],
                                   atol=1e-5, rtol=0)
    # Mean/std come from pretrain_ds_mean_std.txt beside the checkpoint.
    stats = json.loads((folder / "pretrain_ds_mean_std.txt").read_text().splitlines()[0])
    assert det.preprocessing()["mean"] == pytest.approx(stats["mean"])
    assert det.preprocessing()["std"] == pytest.approx(stats["std"])


def test_this_tools_checkpoint_keeps_class_order_and_statistics(fsfm, tmp_path):
    folder, expected, cfg = fsfm
    det = build_detector(cfg, weights=folder / "fsfm_tiny_finetuned.pth").eval()
    path = export_safetensors(det, tmp_path / "fsfm.safetensors", checkpoint_meta(det))
    back = load_checkpoint(path)
    assert back.fake_index == 0 and back.preprocessing() == det.preprocessing()
    with torch.no_grad():
        torch.testing.assert_close(back.predict_proba(expected["input"]), expected["prob_fake"],
                                   atol=1e-5, rtol=0)


def test_normalisation_file_is_read_and_fallback_is_vggface2(fsfm, tmp_path):
    folder, _, cfg = fsfm
    ckpt = tmp_path / "ft.pth"
    shutil.copy(folder / "fsfm_tiny_finetuned.pth", ckpt)
    det = build_detector(cfg, weights=ckpt)  # no stats file beside it
    assert tuple(det.mean) == VGGFACE2_MEAN and tuple(det.std) == VGGFACE2_STD
    (tmp_path / "pretrain_ds_mean_std.txt").write_text(
        json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}) + "\nextra line\n")
    assert build_detector(cfg, weights=ckpt).mean == (0.1, 0.2, 0.3)
    (tmp_path / "pretrain_ds_mean_std.txt").write_text("mean 0.5\n")
    with pytest.raises(CheckpointError, match="pretrain_ds_mean_std.txt"):
        build_detector(cfg, weights=ckpt)


def test_pretrained_encoder_loads_for_finetuning_at_another_size(fsfm):
    folder, _, cfg = fsfm
    pretrained = folder / "fsfm_tiny_pretrained.pth"
    raw = read_state_dict(pretrained)  # argparse.Namespace in 'args' is allowed, nothing else
    det = build_detector({**cfg, "pretrained": str(pretrained), "input_size": 96})
    assert det.input_size == 96 and det.backbone.pos_embed.shape == (1, 37, 64)  # 6x6 + cls
    torch.testing.assert_close(det.backbone.blocks[1].attn.qkv.weight, raw["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(det.backbone.pos_embed[:, :1], raw["pos_embed"][:, :1])
    assert det.head.fc.weight.abs().max() < 1e-4  # fresh head, std 2e-5
    assert torch.equal(det.backbone.fc_norm.weight, torch.ones(64))  # fresh fc_norm
    assert det(torch.randn(2, 3, 96, 96)).shape == (2, 2)
    # The same size loads without resampling.
    same = build_detector({**cfg, "pretrained": str(pretrained)})
    torch.testing.assert_close(same.backbone.pos_embed, raw["pos_embed"])


def test_wrong_files_are_explained(fsfm):
    folder, _, cfg = fsfm
    with pytest.raises(CheckpointError, match="model.pretrained"):
        build_detector(cfg, weights=folder / "fsfm_tiny_pretrained.pth")
    with pytest.raises(CheckpointError, match="model.vit differs"):
        build_detector({**cfg, "vit": {**cfg["vit"], "embed_dim": 32, "num_heads": 4}},
                       ).load_pretrained(folder / "fsfm_tiny_pretrained.pth")
    with pytest.raises(CheckpointError, match="shape of backbone.cls_token"):
        build_detector({**cfg, "vit": {**cfg["vit"], "embed_dim": 32}},
                       weights=folder / "fsfm_tiny_finetuned.pth")



def test_finetuning_from_the_pretrained_encoder_learns_with_fake_index_0(fsfm, toy_dataset, tmp_path):
    from conftest import tiny_config

    from deepfake_detect.config import load_config
    from deepfake_detect.training.train import train

    folder, _, cfg = fsfm
    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=3)
    base["model"] = {**cfg, "pretrained": str(folder / "fsfm_tiny_pretrained.pth")}
    base["train"]["optimizer"] = {"name": "adamw", "lr": 1e-3}
    result = train(load_config(base=base), out=tmp_path / "run")
    det = load_checkpoint(result.run_dir / "model.safetensors")
    assert det.fake_index == 0 and det.input_size == 64
    # P(fake) is read from logit 0 and the toy task is learnt in that orientation.
    assert result.test_metrics["frame"]["auc"] > 0.8


def test_official_finetuned_file_runs_through_load_detector(fsfm, tmp_path):
    import yaml

    from deepfake_detect.models.checkpoint import load_detector

    folder, expected, cfg = fsfm
    config = tmp_path / "fsfm_tiny.yaml"
    config.write_text(yaml.safe_dump({"model": cfg}))
    det = load_detector(folder / "fsfm_tiny_finetuned.pth", config)
    assert det.checkpoint_meta.model["fake_index"] == 0
    assert det.checkpoint_meta.preprocessing["mean"] == pytest.approx([0.5482, 0.4234, 0.3655])
    with torch.no_grad():
        torch.testing.assert_close(det.predict_proba(expected["input"]), expected["prob_fake"],
                                   atol=1e-5, rtol=0)
