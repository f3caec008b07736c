"""ONNX export (verified against PyTorch) and ONNX Runtime scoring through predict / evaluate.

Every family of image detector (and the dual-stream clip detector) is exported from a
checkpoint the way `deepfake-detect export --format onnx` does, and its P(fake) under ONNX Runtime
compared with the PyTorch model's at batch sizes 1 and 5 (the traced batch is 2, the export's
own check 3): fp32 within 1e-4.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_DUAL_STREAM, face_checkpoint, make_dataset
from torch import nn
from typer.testing import CliRunner

from deepfake_detect.cli import app
from deepfake_detect.errors import CheckpointError, ConfigError, DataError, OutputError
from deepfake_detect.inference.ensemble import Ensemble, load_predictor
from deepfake_detect.inference.onnx_model import OnnxModel
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors, onnx_export
from deepfake_detect.models.checkpoint import export_checkpoint
from deepfake_detect.models.onnx_export import FP16_TOLERANCE, FP32_TOLERANCE, OnnxParityError

runner = CliRunner()
EFFORT_TINY = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 56, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
FSFM_VIT = {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 64, "patch_size": 16}
CNN = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}


def spread(module: nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Larger random weights for ``module`` (a head), so that P(fake) spreads over (0, 1)
    instead of sitting at 0.5 as with a fresh head: the comparisons then mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def save(det, path: Path, **meta) -> Path:
    return export_safetensors(det.eval(), path, checkpoint_meta(det, **meta))


def p_fake(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.probabilities(model.module(x)).double().numpy()


def parity(source: Path, onnx_path: Path, shape: tuple[int, ...], reference=None) -> float:
    """Max |ΔP(fake)| between the source checkpoint (PyTorch, or ``reference``: a module
    giving logits) and the .onnx (ONNX Runtime), over batches of 1 and 5 inputs."""
    onnx_model = load_predictor(onnx_path)
    assert isinstance(onnx_model, OnnxModel)
    torch_model = LoadedModel.load(source) if reference is None else LoadedModel.from_module(reference)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in (1, 5):
        x = torch.randn(batch, *shape, generator=gen)
        a, b = p_fake(torch_model, x), p_fake(onnx_model, x)
        assert a.shape == b.shape == (batch,)
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


# -- every family -----------------------------------------------------------------------------


def test_timm_cnn_with_cbam_and_mlp_head(tmp_path):
    torch.manual_seed(0)
    det = build_detector({**CNN, "attention": "cbam",
                          "head": {"type": "mlp", "hidden": [16], "batch_norm": True}})
    spread(det.head)
    src = save(det, tmp_path / "cnn.safetensors", threshold=0.4, temperature=1.5)
    result = export_checkpoint(src, tmp_path / "cnn.onnx", format="onnx")
    assert (result.format, result.precision, result.exporter) == ("onnx", "fp32", "dynamo")
    assert result.max_diff <= FP32_TOLERANCE
    assert parity(src, result.path, (3, 32, 32)) <= FP32_TOLERANCE
    model = load_predictor(result.path)
    assert (model.threshold, model.temperature, model.name) == (0.4, 1.5, "timm")
    x = torch.randn(4, 3, 32, 32)
    assert np.ptp(p_fake(model, x)) > 0.01  # the scores compared are not all alike
    # the file alone says how to predict
    import onnx

    entries = onnx.load(str(result.path)).metadata_props
    props = {p.key: p.value for p in entries}
    assert len(props) == len(entries)  # each key once
    assert props["deepfake_detect.format"] == "1"
    assert json.loads(props["deepfake_detect.preprocessing"]) == det.preprocessing()
    assert float(props["deepfake_detect.threshold"]) == 0.4
    assert float(props["deepfake_detect.temperature"]) == 1.5
    assert json.loads(props["deepfake_detect.output"])["fake_index"] == 1
    assert json.loads(props["deepfake_detect.parity"])["max_abs_diff_p_fake"] <= FP32_TOLERANCE
    assert props["deepfake_detect.detector"] == "timm" and props["deepfake_detect.version"]


def test_variance_head_exports_its_log_variance(tmp_path):
    torch.manual_seed(0)
    det = build_detector({**CNN, "attention": "se", "uncertainty": {"enabled": True}})
    spread(det.head)
    spread(det.variance_head, 0.3, seed=1)
    src = save(det, tmp_path / "var.safetensors", temperature=2.0)
    out = export_checkpoint(src, tmp_path / "var.onnx").path  # .onnx: the format by its suffix
    assert parity(src, out, (3, 32, 32)) <= FP32_TOLERANCE
    onnx_model, torch_model = load_predictor(out), LoadedModel.load(src)
    assert onnx_model.module.predicts_variance
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        _, a = torch_model.module.forward_with_variance(x)
        _, b = onnx_model.module.forward_with_variance(x)
    assert float(a.std()) > 0.01
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # predict's per-file variance (temperature-scaled) through the same scoring loop
    files = sorted(make_dataset(tmp_path / "img", videos_per_class=2, frames=1).rglob("*.png"))
    options = ScoringOptions(batch_size=3, num_workers=0, device="cpu", progress=False)
    sa, sb = torch_model.score_images(files, options), onnx_model.score_images(files, options)
    assert sb.var is not None and np.abs(sa.scores - sb.scores).max() <= FP32_TOLERANCE
    np.testing.assert_allclose(sb.var, sa.var, rtol=1e-4)


def test_effort_release_merged_matches_the_official_scores(shared, tmp_path):
    folder = shared / "fixtures" / "effort"
    expected = torch.load(folder / "effort_tiny_expected.pt", weights_only=True)
    config = tmp_path / "effort.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "effort",
                                                "clip": dict(expected["clip_vision_config"])}}))
    out = tmp_path / "effort.onnx"
    result = export_checkpoint(folder / "effort_tiny_checkpoint.pth", out, config=config,
                               format="onnx")
    assert result.max_diff <= FP32_TOLERANCE
    model = load_predictor(out)
    # the merged weights in ONNX Runtime against the official (unmerged) forward
    ort_p = p_fake(model, expected["input"])
    assert np.abs(ort_p - expected["prob_fake"].double().numpy()).max() <= FP32_TOLERANCE
    import onnx

    names = {i.name for i in onnx.load(str(out)).graph.initializer}
    assert not any("residual" in n or "weight_main" in n for n in names)


def test_fsfm_vit_parity_with_fake_index_0(shared, tmp_path):
    folder = shared / "fixtures" / "fsfm"
    expected = torch.load(folder / "fsfm_tiny_expected.pt", weights_only=True)
    out = tmp_path / "fsfm.onnx"
    config = tmp_path / "fsfm.yaml"
    config.write_text(yaml.safe_dump({"name": "fsfm", "vit": FSFM_VIT}))
    result = export_checkpoint(folder / "fsfm_tiny_finetuned.pth", out, config=config,
                               format="onnx")
    assert result.max_diff <= FP32_TOLERANCE
    model = load_predictor(out)
    assert model.module.fake_index == 0
    ort_p = p_fake(model, expected["input"])
    assert np.abs(ort_p - expected["prob_fake"].double().numpy()).max() <= FP32_TOLERANCE
    stats = json.loads((folder / "pretrain_ds_mean_std.txt").read_text().splitlines()[0])
    assert model.preprocessing["mean"] == pytest.approx(stats["mean"])


def test_lora_adapters_are_merged_before_export(tmp_path):
    from deepfake_detect.config.schema import LoraSettings
    from deepfake_detect.models.strategies import apply_lora

    torch.manual_seed(0)
    det = build_detector({"name": "fsfm", "vit": FSFM_VIT})
    apply_lora(det, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv"]))
    for name, p in det.named_parameters():  # as if trained: the adapters change the output
        if "lora_B" in name:
            nn.init.normal_(p, std=0.2)
    spread(det.head)
    src = save(det.eval(), tmp_path / "lora.safetensors")
    out = tmp_path / "lora.onnx"
    assert export_checkpoint(src, out).max_diff <= FP32_TOLERANCE
    # against the unmerged model with its adapters, in PyTorch
    assert parity(src, out, (3, 64, 64), reference=det) <= FP32_TOLERANCE
    import onnx

    assert not any("lora" in i.name for i in onnx.load(str(out)).graph.initializer)


def test_dual_stream_clips_parity_and_clip_scoring(tmp_path):
    torch.manual_seed(0)
    det = build_detector({**TINY_DUAL_STREAM, "sequence": {"frames": 3, "stride": 1,
                                                           "eval_clips": 2}})
    spread(det.head)
    src = save(det, tmp_path / "clips.safetensors")
    out = tmp_path / "clips.onnx"
    assert export_checkpoint(src, out).max_diff <= FP32_TOLERANCE
    assert parity(src, out, (3, 3, 32, 32)) <= FP32_TOLERANCE
    model = load_predictor(out)
    assert model.input_kind == "clips"
    assert model.preprocessing["sequence"]["frames"] == 3
    # whole videos of face crops: the same scores through the clip pipeline
    data = make_dataset(tmp_path / "frames", videos_per_class=2, frames=4, size=32)
    from deepfake_detect.data.samples import Sample

    samples = [Sample(path=p, label=int(p.parent.name == "fake"),
                      video=f"{p.parent.name}/{p.stem.split('_')[0]}", frame=p.stem.split("_")[-1])
               for p in sorted(data.rglob("*.png"))]
    options = ScoringOptions(batch_size=4, num_workers=0, device="cpu", progress=False)
    a = LoadedModel.load(src).score_clips(samples, options)
    b = model.score_clips(samples, options)
    assert np.abs(a.scores - b.scores).max() <= FP32_TOLERANCE


# -- predict and evaluate on a .onnx ----------------------------------------------------------


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    """The face checkpoint of the predict tests and its ONNX export (through the CLI)."""
    tmp = tmp_path_factory.mktemp("onnx_face")
    src = face_checkpoint(tmp, {"crop": {"margin": 1.5}})
    out = tmp / "model.onnx"
    result = runner.invoke(app, ["export", "--checkpoint", str(src), "--format", "onnx",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |ΔP(fake)|" in result.output
    return src, out


def _scores(csv_path: Path, key: str, score: str = "score") -> dict[str, float]:
    with open(csv_path, newline="") as fh:
        return {row[key]: float(row[score]) for row in csv.DictReader(fh)}


def test_predict_crops_gives_the_source_checkpoints_scores(face_models, tmp_path):
    src, onnx_path = face_models
    crops = make_dataset(tmp_path / "crops", videos_per_class=3, frames=2, size=40)
    rows = {}
    for name, ckpt in (("torch", src), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--crops", str(crops),
                                     "--workers", "0", "--batch-size", "5", "--tta", "hflip",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        rows[name] = _scores(out, "filename")
    assert rows["torch"].keys() == rows["onnx"].keys() and len(rows["onnx"]) == 12
    diff = max(abs(rows["torch"][k] - rows["onnx"][k]) for k in rows["torch"])
    assert diff <= FP32_TOLERANCE
    assert np.ptp(list(rows["onnx"].values())) > 0  # not one constant score


def test_evaluate_gives_the_source_checkpoints_scores(face_models, tmp_path):
    src, onnx_path = face_models
    data = make_dataset(tmp_path / "toy", videos_per_class=3, frames=2, size=40)
    scores = {}
    for name, ckpt in (("torch", src), ("onnx", onnx_path)):
        out = tmp_path / f"eval_{name}"
        result = runner.invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                     "--out", str(out), "--workers", "0", "--no-plots",
                                     "--bootstrap", "0"])
        assert result.exit_code == 0, result.output
        scores[name] = _scores(out / "toy" / "predictions.csv", "path")
        info = json.loads((out / "toy" / "metrics.json").read_text())
        scores[name + "_auc"] = info["frame"]["auc"]
    assert scores["torch"].keys() == scores["onnx"].keys()
    assert max(abs(scores["torch"][k] - scores["onnx"][k]) for k in scores["torch"]) <= FP32_TOLERANCE
    assert scores["torch_auc"] == pytest.approx(scores["onnx_auc"], abs=1e-6)


def test_onnx_model_keeps_the_face_settings_and_refuses_mc_dropout(face_models):
    src, onnx_path = face_models
    model, source = load_predictor(onnx_path), LoadedModel.load(src)
    assert model.prepare_settings() == source.prepare_settings()
    assert model.prepare_settings().crop.margin == 1.5
    assert model.preprocessing == source.preprocessing
    assert model.run_record() == (source.meta.experiment, str(onnx_path))
    with pytest.raises(ConfigError, match="--mc-dropout with the ONNX model.*no dropout"):
        model.check(ScoringOptions(mc_dropout=4, device="cpu"))
    with pytest.raises(ConfigError, match="--config with the ONNX model"):
        load_predictor(onnx_path, config=onnx_path)


def test_face_crops_in_memory_and_an_ensemble_of_onnx_and_torch(face_models):
    src, onnx_path = face_models
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    options = ScoringOptions(batch_size=2, num_workers=0, device="cpu", progress=False)
    a = LoadedModel.load(src).score_crops(crops, options).scores
    b = load_predictor(onnx_path).score_crops(crops, options).scores
    assert np.abs(a - b).max() <= FP32_TOLERANCE
    ensemble = load_predictor([onnx_path, src])
    assert isinstance(ensemble, Ensemble) and isinstance(ensemble.members[0].model, OnnxModel)
    both = ensemble.score_crops(crops, options).scores
    assert np.abs(both - (a + b) / 2).max() <= 1e-6


def test_a_batch_of_the_wrong_shape_is_a_clear_error(face_models):
    _, onnx_path = face_models
    model = load_predictor(onnx_path)
    with pytest.raises(DataError, match=r"takes input \(batch, 3, 32, 32\), got \(2, 3, 40, 40\)"):
        model.module(torch.randn(2, 3, 40, 40))
    with pytest.raises(DataError, match=r"got \(3, 32, 32\)"):
        model.module(torch.randn(3, 32, 32))


def test_metadata_that_does_not_fit_the_graph_is_refused(face_models, tmp_path):
    import onnx

    _, onnx_path = face_models
    model = onnx.load(str(onnx_path))
    for p in model.metadata_props:
        if p.key == "deepfake_detect.preprocessing":
            pre = json.loads(p.value)
            p.value = json.dumps({**pre, "input_size": 64})
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(CheckpointError, match=r"takes input \(batch, 3, 32, 32\).*\(batch, 3, 64, 64\)"):
        load_predictor(edited)


def test_an_onnx_file_without_our_metadata_is_refused(tmp_path):
    plain = tmp_path / "model.onnx"
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 32, 32),), str(plain), dynamo=True,
                      verbose=False)
    message = (r"model.onnx was not exported by deepfake-detect: it lacks the deepfake_detect\.\* "
               r"metadata \(preprocessing, threshold\); export it with `deepfake-detect export "
               r"--format onnx`")
    with pytest.raises(CheckpointError, match=message):
        load_predictor(plain)
    result = runner.invoke(app, ["predict", "--checkpoint", str(plain), "--crops", str(tmp_path)])
    assert result.exit_code != 0
    assert "was not exported by deepfake-detect" in str(result.exception)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        load_predictor(garbage)


# -- the export's own check ---------------------------------------------------------------------


def test_export_refuses_and_leaves_no_file_when_parity_fails(face_models, tmp_path, monkeypatch):
    src, _ = face_models
    real = onnx_export.run_onnxruntime

    def perturbed(model, x):
        outputs = real(model, x)
        outputs["logits"] = outputs["logits"] + np.float32(0.01)  # P(fake) moves by ~2.5e-3
        outputs["logits"][:, 0] -= np.float32(0.01)
        return outputs

    monkeypatch.setattr(onnx_export, "run_onnxruntime", perturbed)
    out = tmp_path / "refused.onnx"
    with pytest.raises(OnnxParityError, match=r"not written: .*max \|ΔP\(fake\)\| [0-9.e-]+ > 0.0001") as info:
        export_checkpoint(src, out, format="onnx")
    assert info.value.max_diff > FP32_TOLERANCE
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no model, no temporary file
    result = runner.invoke(app, ["export", "--checkpoint", str(src), "--out", str(out)])
    assert result.exit_code != 0 and "not written" in str(result.exception) and not out.exists()


def test_fp16_export_of_a_cnn(tmp_path):
    torch.manual_seed(0)
    det = build_detector({**CNN, "attention": "cbam"})
    spread(det.head, 0.3)
    src = save(det, tmp_path / "cnn.safetensors")
    out = tmp_path / "cnn_fp16.onnx"
    result = export_checkpoint(src, out, format="onnx", fp16=True)
    assert (result.precision, result.tolerance) == ("fp16", FP16_TOLERANCE)
    assert result.max_diff <= FP16_TOLERANCE
    assert parity(src, out, (3, 32, 32)) <= FP16_TOLERANCE
    model = load_predictor(out)
    assert model.precision == "fp16"
    import onnx

    graph = onnx.load(str(out)).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 interface


def test_torchscript_exporter_when_dynamo_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    torch.manual_seed(0)
    det = build_detector({**CNN, "attention": "se"})
    spread(det.head)
    src = save(det, tmp_path / "cnn.safetensors")
    result = export_checkpoint(src, tmp_path / "cnn.onnx")
    assert result.exporter == "torchscript" and result.max_diff <= FP32_TOLERANCE
    assert parity(src, result.path, (3, 32, 32)) <= FP32_TOLERANCE
    monkeypatch.setattr(onnx_export, "_export_torchscript", broken)
    with pytest.raises(CheckpointError, match="could not be exported to ONNX.*dynamo: .*torchscript"):
        export_checkpoint(src, tmp_path / "other.onnx")
    assert not (tmp_path / "other.onnx").exists()


def test_export_options_are_checked_before_anything_is_read(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ConfigError, match=r"\.onnx file"):
        export_checkpoint(missing, tmp_path / "model.safetensors", format="onnx")
    with pytest.raises(ConfigError, match="--fp16 applies to --format onnx"):
        export_checkpoint(missing, tmp_path / "model.safetensors", fp16=True)
    with pytest.raises(ConfigError, match="--format 'tflite'"):
        export_checkpoint(missing, tmp_path / "model.onnx", format="tflite")
    result = runner.invoke(app, ["export", "--checkpoint", str(missing), "--out",
                                 str(tmp_path / "m.safetensors"), "--format", "onnx"])
    assert result.exit_code != 0 and ".onnx file" in str(result.exception)


def test_reexport_replaces_its_own_file_but_not_anothers(face_models, tmp_path):
    src, onnx_path = face_models
    out = tmp_path / "again.onnx"
    out.write_bytes(onnx_path.read_bytes())
    assert export_checkpoint(src, out, threshold=0.3).path == out  # ours: replaced
    assert load_predictor(out).threshold == 0.3
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"\x08\x07")
    with pytest.raises(OutputError, match="not written by deepfake-detect"):
        export_checkpoint(src, foreign)
    assert foreign.read_bytes() == b"\x08\x07"
