"""Effort: exactness with the official checkpoints, SVD at build, merging, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.models import build_detector, export_safetensors, load_checkpoint
from deepfake_detect.models.adapters.svd import SVDResidualLinear, svd_residual_layers
from deepfake_detect.models.checkpoint import checkpoint_meta, load_detector
from deepfake_detect.models.registry import get_entry, validate_model_config

TINY = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 56, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}


@pytest.fixture(scope="module")
def effort_files(shared):
    folder = shared / "fixtures" / "effort"
    expected = torch.load(folder / "effort_tiny_expected.pt", weights_only=True)
    return folder / "effort_tiny_checkpoint.pth", expected


def tiny_cfg(**model) -> dict:
    return {"name": "effort", "clip": dict(TINY), **model}


def release_cfg(expected) -> dict:
    return {"name": "effort", "clip": dict(expected["clip_vision_config"])}


def test_released_checkpoint_reproduces_official_logits(effort_files):
    path, expected = effort_files
    assert expected["clip_vision_config"] == {k: TINY[k] for k in expected["clip_vision_config"]}
    det = build_detector(release_cfg(expected), weights=path).eval()
    with torch.no_grad():
        logits = det(expected["input"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(det.predict_proba(expected["input"]), expected["prob_fake"],
                               atol=1e-5, rtol=0)
    # The residual factors were perturbed after the official SVD: they are not a fresh SVD.
    layer = svd_residual_layers(det.backbone)[0]
    s_full = torch.linalg.svdvals(layer.merged_weight().double())
    assert not torch.allclose(layer.S_residual.double(), s_full[-1:], atol=1e-6)


def test_loading_the_release_computes_no_svd(effort_files, monkeypatch):
    path, expected = effort_files

    def no_svd(*args, **kwargs):
        raise AssertionError("an SVD was computed while loading a checkpoint that holds factors")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    det = build_detector(release_cfg(expected), weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict_key", "both"])
def test_release_wrappers_load(effort_files, tmp_path, wrap):
    path, expected = effort_files
    sd = torch.load(path, weights_only=True)
    if wrap in ("module_prefix", "both"):
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap in ("state_dict_key", "both") else sd
    torch.save(obj, tmp_path / "wrapped.pth")
    det = build_detector(release_cfg(expected), weights=tmp_path / "wrapped.pth").eval()
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)


def test_later_copies_with_principal_factors_load(effort_files, tmp_path):
    path, expected = effort_files
    sd = torch.load(path, weights_only=True)
    extra = {}
    for key, value in sd.items():
        if key.endswith(".weight_main"):
            base = key.removesuffix("weight_main")
            extra[base + "U_r"] = torch.zeros(value.shape[0], value.shape[1] - 1)
            extra[base + "S_r"] = torch.zeros(value.shape[1] - 1)
            extra[base + "V_r"] = torch.zeros(value.shape[1] - 1, value.shape[1])
    torch.save({**sd, **extra}, tmp_path / "later.pth")
    det = build_detector(release_cfg(expected), weights=tmp_path / "later.pth").eval()
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)


def test_only_residuals_and_head_train():
    det = build_detector(tiny_cfg())
    trainable = {n for n, p in det.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in det.named_parameters()
        if n.startswith("head.") or n.rsplit(".", 1)[-1] in ("U_residual", "S_residual", "V_residual")
    }
    h, layers = TINY["hidden_size"], TINY["num_hidden_layers"]
    assert sum(det.get_parameter(n).numel() for n in trainable) == layers * 4 * (2 * h + 1) + 2 * h + 2
    assert len(svd_residual_layers(det)) == layers * 4
    assert det.preprocessing() == {
        "input_size": 56, "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }


def test_full_size_layout_matches_the_release_key_list(shared):
    listed = json.loads((shared / "fixtures/effort/effort_clip_l14_keys.json").read_text())
    # Structure only: no init, no SVD.
    det = get_entry("effort").build(validate_model_config({"name": "effort"}), weights_follow=True)
    sd = det.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == {k: list(s) for k, s in listed.items()}
    assert sum(v.numel() for v in sd.values()) == 303_378_530
    assert sum(p.numel() for p in det.parameters() if p.requires_grad) == 96 * 2049 + 2050


def test_mlp_layers_can_be_adapted_and_bad_patterns_are_explained():
    det = build_detector(tiny_cfg(adapter={
        "targets": ["encoder.layers.*.self_attn.*_proj", "encoder.layers.*.mlp.fc*"],
        "residual_rank": 2,
    }))
    layers = svd_residual_layers(det)
    assert len(layers) == TINY["num_hidden_layers"] * 6 and {m.rank for m in layers} == {2}
    with pytest.raises(ConfigError, match=r"model.adapter.targets.*'encoder.blocks.\*'"):
        build_detector(tiny_cfg(adapter={"targets": ["encoder.blocks.*"]}))
    with pytest.raises(ConfigError, match="model.clip"):
        validate_model_config(tiny_cfg(clip={**TINY, "hidden_sise": 3}))
    with pytest.raises(ConfigError, match="clip.image_size"):
        build_detector(tiny_cfg(input_size=64))


# -- plain CLIP weights: the SVD at build --------------------------------------------------------


@pytest.fixture(scope="module")
def clip_snapshot(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("clip-snapshot")
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("svd_dtype", ["float64", "float32"])
def test_svd_of_plain_clip_rebuilds_every_weight(clip_snapshot, svd_dtype):
    folder, plain = clip_snapshot
    det = build_detector(tiny_cfg(pretrained=str(folder), adapter={"svd_dtype": svd_dtype}))
    original = dict(plain.named_parameters())
    for name, module in det.backbone.named_modules():
        if not isinstance(module, SVDResidualLinear):
            continue
        w = original[f"{name}.weight"].detach()
        rebuilt = module.merged_weight()
        assert ((rebuilt - w).norm() / w.norm()).item() < 1e-5
        # The residual is the smallest singular component; the frozen part keeps the rest.
        s = torch.linalg.svdvals(w.double())
        assert torch.allclose(module.S_residual.double(), s[-1:], rtol=1e-4)
        assert torch.linalg.matrix_rank(module.weight_main.double(), rtol=1e-5) == len(s) - 1
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = det.head(plain(pixel_values=x).pooler_output)
        torch.testing.assert_close(det.eval()(x), want, atol=1e-5, rtol=1e-5)


def test_plain_clip_from_a_clipmodel_weights_file(clip_snapshot, tmp_path):
    from safetensors.torch import save_file

    folder, plain = clip_snapshot
    full = {f"vision_model.{k}": v.contiguous() for k, v in plain.state_dict().items()}
    full["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    full["visual_projection.weight"] = torch.zeros(8, TINY["hidden_size"])
    full["logit_scale"] = torch.tensor(2.0)
    save_file(full, tmp_path / "clip.safetensors")
    det = build_detector(tiny_cfg(pretrained=str(tmp_path / "clip.safetensors"))).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(det(x), det.head(plain(pixel_values=x).pooler_output),
                                   atol=1e-5, rtol=1e-5)


def test_snapshot_of_another_clip_size_is_refused(clip_snapshot, tmp_path):
    folder, _ = clip_snapshot
    with pytest.raises(ConfigError, match=r"model.clip.num_hidden_layers is 3 .* has 2"):
        build_detector(tiny_cfg(pretrained=str(folder), clip={**TINY, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        build_detector(tiny_cfg(pretrained=str(tmp_path)))


# -- merging for inference and export -------------------------------------------------------------


def test_merged_model_is_plain_clip_with_identical_outputs(effort_files, tmp_path):
    path, expected = effort_files
    det = build_detector(release_cfg(expected), weights=path).eval()
    merged = build_detector(release_cfg(expected), weights=path).for_inference()
    assert not svd_residual_layers(merged) and merged.config.merged
    assert all(type(m) is nn.Linear for n, m in merged.backbone.named_modules()
               if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj")))
    x = expected["input"]
    with torch.no_grad():
        torch.testing.assert_close(merged(x), det(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(merged(x), expected["logits"], atol=1e-5, rtol=0)
    # The export holds the merged model and rebuilds as such, without factors.
    out = export_safetensors(merged, tmp_path / "effort.safetensors", checkpoint_meta(merged))
    back = load_checkpoint(out)
    assert back.config.merged and not svd_residual_layers(back)
    assert not any(k.endswith("weight_main") for k in back.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), expected["logits"], atol=1e-5, rtol=0)


def test_load_detector_reads_the_release_with_a_config(effort_files, tmp_path):
    import yaml

    path, expected = effort_files
    config = tmp_path / "effort_tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "x", "model": release_cfg(expected)}))
    det = load_detector(path, config)
    assert det.config.merged and det.threshold == 0.5
    assert det.checkpoint_meta.model["name"] == "effort"
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="not a deepfake-detect checkpoint"):
        load_detector(path)  # without a config the release cannot be identified


# -- errors ---------------------------------------------------------------------------------------


def test_one_logit_config_against_two_logit_release_is_explained(effort_files):
    path, expected = effort_files
    with pytest.raises(CheckpointError, match=r"head has 2 output\(s\).*num_classes: 2"):
        build_detector({**release_cfg(expected), "num_classes": 1}, weights=path)


def test_other_architecture_is_refused_with_keys_and_cause(shared):
    fsfm = shared / "fixtures" / "fsfm" / "fsfm_tiny_finetuned.pth"
    with pytest.raises(CheckpointError) as info:
        build_detector(tiny_cfg(), weights=fsfm)
    msg = str(info.value)
    assert "first missing: backbone." in msg and "first unexpected:" in msg
    assert "likely cause: the file was saved from a different architecture" in msg


def test_clip_size_mismatch_names_the_config_keys(effort_files):
    path, expected = effort_files
    with pytest.raises(CheckpointError, match=r"model.clip.hidden_size: 64.*model.clip.num_hidden_layers: 2"):
        build_detector({"name": "effort", "clip": {**TINY, "hidden_size": 32,
                                                   "num_hidden_layers": 1}}, weights=path)


def test_merged_file_into_trainable_model_and_plain_clip_as_weights(effort_files, clip_snapshot, tmp_path):
    from safetensors.torch import save_file

    path, expected = effort_files
    merged = build_detector(release_cfg(expected), weights=path).for_inference()
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="merged: true"):
        build_detector(release_cfg(expected), weights=tmp_path / "m.safetensors")
    # ... and the merged file loads into a merged model.
    back = build_detector({**release_cfg(expected), "merged": True}, weights=tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(expected["input"]), expected["logits"], atol=1e-5, rtol=0)
    # A release loaded into a merged model is merged on the fly.
    direct = build_detector({**release_cfg(expected), "merged": True}, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(direct(expected["input"]), expected["logits"], atol=1e-5, rtol=0)
    folder, plain = clip_snapshot
    save_file({f"backbone.{k}": v.contiguous() for k, v in plain.state_dict().items()},
              tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="model.pretrained"):
        build_detector(tiny_cfg(), weights=tmp_path / "plain.safetensors")


# -- the adapter layer itself ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,rank,bias", [((12, 8), 1, True), ((8, 12), 3, False)])
def test_factored_forward_equals_dense_weight(shape, rank, bias):
    torch.manual_seed(0)
    linear = nn.Linear(shape[1], shape[0], bias=bias)
    layer = SVDResidualLinear.from_linear(linear, rank)
    with torch.no_grad():
        layer.U_residual.add_(0.1 * torch.randn_like(layer.U_residual))
    x = torch.randn(5, 7, shape[1])
    dense = F.linear(x, layer.merged_weight(), layer.bias)
    torch.testing.assert_close(layer(x), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.to_linear()(x), dense, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(10, 10), (12, 8), (8, 12)])
def test_orthogonality_loss_matches_the_paper_formula(shape):
    torch.manual_seed(1)
    layer = SVDResidualLinear.from_linear(nn.Linear(shape[1], shape[0]), rank=2)
    if shape[0] == shape[1]:  # a fresh SVD of a square weight is orthonormal both ways
        assert layer.orthogonality_loss().item() < 1e-4
    with torch.no_grad():
        layer.U_residual.mul_(1.5).add_(0.2)
        layer.V_residual.add_(0.3 * torch.randn_like(layer.V_residual))
    u, _, vh = torch.linalg.svd(layer.weight_main.detach().double(), full_matrices=False)
    r = min(shape) - 2
    big_u = torch.cat([u[:, :r], layer.U_residual.detach().double()], 1)
    big_v = torch.cat([vh[:r], layer.V_residual.detach().double()], 0)
    want = (0.5 * torch.linalg.norm(big_u @ big_u.T - torch.eye(big_u.shape[0], dtype=torch.float64))
            + 0.5 * torch.linalg.norm(big_v @ big_v.T - torch.eye(big_v.shape[0], dtype=torch.float64)))
    loss = layer.orthogonality_loss()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    loss.backward()
    assert layer.U_residual.grad is not None and layer.weight_main.grad is None


def test_keep_sv_loss_is_the_weight_energy_change():
    torch.manual_seed(2)
    layer = SVDResidualLinear.from_linear(nn.Linear(9, 11), rank=2)
    start = layer.merged_weight().detach().double().square().sum()
    assert layer.keep_sv_loss().item() < 1e-4  # the reference is taken at the first call
    with torch.no_grad():
        layer.S_residual.mul_(3.0)
        layer.V_residual.add_(0.1)
    now = layer.merged_weight().detach().double().square().sum()
    assert layer.keep_sv_loss().item() == pytest.approx(abs(now - start).item(), rel=1e-4)


def test_regularisers_enter_the_loss_only_when_weighted():
    det = build_detector(tiny_cfg()).train()
    assert det.regularization_loss() is None
    det = build_detector(tiny_cfg(adapter={"orthogonality": 0.5, "keep_sv": 0.1})).train()
    with torch.no_grad():
        for layer in svd_residual_layers(det):
            layer.U_residual.add_(0.3)
    reg = det.regularization_loss()
    assert reg is not None and reg.item() > 0
    reg.backward()
    assert all(layer.U_residual.grad is not None for layer in svd_residual_layers(det))
    assert det.eval().regularization_loss() is None


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = build_detector(tiny_cfg()).train()
    b = build_detector(tiny_cfg(grad_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 56, 56)
    for det in (a, b):
        F.cross_entropy(det(x), torch.tensor([0, 1])).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.requires_grad:
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_forward_is_close(effort_files):
    path, expected = effort_files
    det = build_detector(release_cfg(expected), weights=path).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        probs = det.predict_proba(expected["input"])
    torch.testing.assert_close(probs, expected["prob_fake"], atol=0.05, rtol=0)


# -- the seed's jobs: fine-tune from the release, evaluate, predict --------------------------------


def test_finetune_from_release_then_evaluate_and_predict(effort_files, toy_dataset, tmp_path):
    from conftest import tiny_config

    from deepfake_detect.config import load_config
    from deepfake_detect.evaluation.evaluate import evaluate_checkpoint
    from deepfake_detect.inference.predict import predict_files
    from deepfake_detect.training.train import train

    path, expected = effort_files
    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=1)
    base["model"] = {**release_cfg(expected), "weights": str(path),
                     "adapter": {"orthogonality": 0.1, "keep_sv": 0.01}}
    base["data"]["augment"] = {"hflip": 0.3, "rotation": 5, "rotation_p": 0.2, "blur": 0.2,
                               "brightness": 0.2, "brightness_limit": 0.05}
    base["train"]["optimizer"] = {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4}
    result = train(load_config(base=base), out=tmp_path / "run")
    run = result.run_dir
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    # Training checkpoints keep the release layout: frozen parts unchanged, residuals trained.
    release = torch.load(path, weights_only=True)
    key = "backbone.encoder.layers.0.self_attn.q_proj"
    assert torch.equal(sd[f"model.{key}.weight_main"], release[f"{key}.weight_main"])
    assert not torch.equal(sd[f"model.{key}.U_residual"], release[f"{key}.U_residual"])
    assert "train_reg_loss_epoch" in (run / "metrics.csv").read_text()
    # The export is merged; it and the checkpoint score alike.
    exported = load_checkpoint(run / "model.safetensors")
    trained = load_checkpoint(result.best_checkpoint)
    assert exported.config.merged and trained.config.merged
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), trained(x), atol=1e-5, rtol=1e-5)
    unmerged = load_checkpoint(result.best_checkpoint, inference=False)
    assert svd_residual_layers(unmerged)
    with torch.no_grad():
        torch.testing.assert_close(unmerged(x), trained(x), atol=1e-5, rtol=1e-5)

    results = evaluate_checkpoint(run / "model.safetensors", [toy_dataset], tmp_path / "eval",
                                  split="test", num_workers=0, plots=False, progress=False)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary) == set(results) and summary[next(iter(summary))]["frame"]["n"] == 36
    rows = predict_files(exported, [toy_dataset / "test" / "fake"], threshold=0.5, num_workers=0,
                         crops=True)
    assert len(rows) == 18 and all(0 <= r.score <= 1 for r in rows)


def test_cli_runs_the_release_through_evaluate_predict_and_export(effort_files, toy_dataset, tmp_path):
    import csv

    import yaml
    from typer.testing import CliRunner

    from deepfake_detect.cli import app

    path, expected = effort_files
    config = tmp_path / "effort_tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "effort-tiny", "model": release_cfg(expected)}))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "-c", str(config), "--checkpoint", str(path),
                                 "--data", str(toy_dataset / "test"), "--data", str(toy_dataset / "val"),
                                 "--out", str(tmp_path / "eval"), "--workers", "0", "--no-plots"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(summary) == 2 and all(m["frame"]["n"] == 36 for m in summary.values())

    result = runner.invoke(app, ["predict", "-c", str(config), "--checkpoint", str(path),
                                 str(toy_dataset / "test" / "real"), "--out", str(tmp_path / "p.csv"),
                                 "--workers", "0", "--crops"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and all(r["score"] and not r["error"] for r in rows)

    out = tmp_path / "effort.safetensors"
    result = runner.invoke(app, ["export", "-c", str(config), "--checkpoint", str(path),
                                 "--out", str(out), "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    det = load_checkpoint(out)
    assert det.threshold == pytest.approx(0.4) and det.config.merged
    with torch.no_grad():
        torch.testing.assert_close(det(expected["input"]), expected["logits"], atol=1e-5, rtol=0)
    # Scores from the release and from its export agree file by file.
    result = runner.invoke(app, ["predict", "--checkpoint", str(out), str(toy_dataset / "test" / "real"),
                                 "--out", str(tmp_path / "q.csv"), "--workers", "0", "--crops"])
    with open(tmp_path / "q.csv", newline="") as fh:
        again = {r["filename"]: float(r["score"]) for r in csv.DictReader(fh)}
    assert all(abs(again[r["filename"]] - float(r["score"])) < 1e-5 for r in rows)
