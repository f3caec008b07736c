"""Heatmaps (Grad-CAM family through grad-cam) per detector family, ``predict --explain``, and
the media scorer's crops and progress that heatmaps and the HTTP service use."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DUAL_STREAM, BrightSquare, face_checkpoint, square_frames, write_video
from PIL import Image
from typer.testing import CliRunner

from deepfake_detect.cli.app import app
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.ensemble import Ensemble, Member
from deepfake_detect.inference.explain import (
    explain_crops,
    explain_layer,
    explain_maps,
    explain_method,
)
from deepfake_detect.inference.media_scoring import MediaScorer
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predict import Heatmaps
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models import build_detector

runner = CliRunner()
OPTIONS = ScoringOptions(batch_size=4, num_workers=0, device="cpu", progress=False)
SWIN = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "window_size": 7}


def _crops(n: int = 3, shape: tuple[int, int] = (70, 60), seed: int = 0) -> list[np.ndarray]:
    """Textured, non-square RGB crops (a map is resized back to each crop's own size)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def _evidence_head(det) -> None:
    """A head that reads every pooled channel as evidence for "fake": a CNN's Grad-CAM map is
    then its (non-negative) activations summed, never all zero as a random head can make it."""
    fc = det.head.fc
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[det.fake_index].fill_(1.0)


def _fixture_model(shared: Path, name: str):
    if name == "effort":
        folder = shared / "fixtures" / "effort"
        expected = torch.load(folder / "effort_tiny_expected.pt", weights_only=True)
        cfg = {"name": "effort", "clip": dict(expected["clip_vision_config"])}
        return build_detector(cfg, weights=folder / "effort_tiny_checkpoint.pth")
    folder = shared / "fixtures" / "fsfm"
    vit = torch.load(folder / "fsfm_tiny_expected.pt", weights_only=True)["vit"]
    cfg = {"name": "fsfm", "vit": {k: vit[k] for k in
                                   ("embed_dim", "depth", "num_heads", "img_size", "patch_size")}}
    return build_detector(cfg, weights=folder / "fsfm_tiny_finetuned.pth")


# family -> (model config or shared fixture name, the layer the maps are computed on)
FAMILIES = {
    "resnet": ({"name": "timm", "timm_name": "test_resnet", "input_size": 96},
               "backbone.layer4"),
    "resnet_se": ({"name": "timm", "timm_name": "test_resnet", "input_size": 96,
                   "attention": "se"}, "attention"),
    "efficientnet_cbam": ({"name": "timm", "timm_name": "test_efficientnet", "input_size": 96,
                           "attention": "cbam"}, "attention"),
    "efficientnet_1logit": ({"name": "timm", "timm_name": "test_efficientnet", "input_size": 96,
                             "num_classes": 1}, "backbone.bn2"),
    "vit": ({"name": "timm", "timm_name": "test_vit", "input_size": 64},
            "backbone.blocks.5.norm1"),
    "swin": ({"name": "timm", "timm_name": "swin_tiny_patch4_window7_224", "input_size": 56,
              "backbone_kwargs": SWIN}, "backbone.layers.1.blocks.0.norm1"),
    "fsfm": ("fsfm", "backbone.blocks.1.norm1"),
    "effort": ("effort", "backbone.encoder.layers.1.layer_norm1"),
}


def _model(shared: Path, family: str) -> LoadedModel:
    cfg, _ = FAMILIES[family]
    torch.manual_seed(0)
    if isinstance(cfg, str):
        return LoadedModel(_fixture_model(shared, cfg).for_inference())
    det = build_detector(cfg).eval()
    if det.explain_target().layout == "nchw":  # a CNN
        _evidence_head(det)
    return LoadedModel(det)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_gets_a_map_of_each_crop(shared: Path, family: str) -> None:
    model = _model(shared, family)
    assert explain_layer(model) == FAMILIES[family][1]
    assert explain_method(model) == "gradcam"
    crops = _crops()
    before = model.score_crops(crops, OPTIONS).scores
    maps = explain_maps(model, crops, OPTIONS)
    overlays = explain_crops(model, crops, OPTIONS)
    assert len(maps) == len(overlays) == len(crops)
    for crop, m, o in zip(crops, maps, overlays, strict=True):
        assert m.shape == crop.shape[:2] and m.dtype == np.float32
        assert 0.0 <= m.min() and m.max() <= 1.0 and m.std() > 1e-3  # a map, not a constant
        assert o.shape == crop.shape and o.dtype == np.uint8 and not np.array_equal(o, crop)
    # deterministic, and no state leaks into scoring
    for a, b in zip(maps, explain_maps(model, crops, OPTIONS), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.score_crops(crops, OPTIONS).scores, before)


def test_modes_flags_and_gradients_are_restored(shared: Path) -> None:
    """Frozen weights (a frozen backbone, Effort's frozen CLIP) still give maps: the input
    carries the gradient; afterwards every flag, mode and held gradient is as it was."""
    for det in (build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 96,
                                "freeze": {"backbone": True}}),
                _fixture_model(shared, "effort")):
        if det.config.name == "timm":
            _evidence_head(det)
        det.train()
        name, weight = next((n, p) for n, p in det.named_parameters()
                            if n.startswith("head.") and n.endswith("weight"))
        weight.grad = torch.ones_like(weight)  # a gradient held, as between training steps
        held = weight.grad
        flags = {n: p.requires_grad for n, p in det.named_parameters()}
        assert not all(flags.values())  # partly frozen
        modes = {n: m.training for n, m in det.named_modules()}
        maps = explain_maps(LoadedModel(det), _crops(2), OPTIONS)
        assert all(m.std() > 1e-3 for m in maps)
        assert {n: p.requires_grad for n, p in det.named_parameters()} == flags
        assert {n: m.training for n, m in det.named_modules()} == modes
        assert weight.grad is held
        assert all(p.grad is None for n, p in det.named_parameters() if n != name)


def test_the_target_is_the_fake_logit() -> None:
    """Evidence for "fake" shows; read with the other class as fake, the same network has none
    (a Grad-CAM map keeps positive evidence only), so the map is not the argmax class's."""
    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 96}).eval()
    _evidence_head(det)
    crops = _crops(2)
    assert all(m.max() > 0.5 for m in explain_maps(LoadedModel(det), crops, OPTIONS))
    det.fake_index = 0  # the same logits, the other class read as fake
    assert all(m.max() == 0 for m in explain_maps(LoadedModel(det), crops, OPTIONS))


def test_other_methods_ensembles_and_refusals(shared: Path) -> None:
    first, second = _model(shared, "resnet"), _model(shared, "vit")
    crops = _crops(2)
    for method in ("gradcam++", "eigencam", "layercam"):
        assert all(m.shape == (70, 60) for m in explain_maps(first, crops, OPTIONS, method))
    with pytest.raises(ConfigError, match="gradcam"):
        explain_maps(first, crops, OPTIONS, method="saliency")
    # an ensemble is explained with its first member
    ensemble = Ensemble([Member("a", "a", first, 1.0), Member("b", "b", second, 1.0)])
    for a, b in zip(explain_maps(ensemble, crops, OPTIONS), explain_maps(first, crops, OPTIONS),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="RGB uint8"):
        explain_maps(first, [crops[0].astype(np.float32)], OPTIONS)
    assert explain_maps(first, [], OPTIONS) == []
    # a bare detector module is wrapped like everywhere else
    for a, b in zip(explain_maps(first.module, crops, OPTIONS), explain_maps(first, crops, OPTIONS),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # a module with no layer to hook (e.g. an exported graph) is refused with the reason
    no_layer = LoadedModel(build_detector({"name": "timm", "timm_name": "test_resnet"}))
    no_layer.module.explain_target = lambda: None
    with pytest.raises(ConfigError, match="cannot be explained"):
        explain_maps(no_layer, crops, OPTIONS)
    # a video detector: refused, by the library and by predict
    clips = LoadedModel(build_detector(TINY_DUAL_STREAM))
    message = "heatmaps explain image detectors; dual_stream scores video clips"
    with pytest.raises(ConfigError, match=message):
        explain_crops(clips, crops, OPTIONS)
    with pytest.raises(ConfigError, match=message):
        Heatmaps(clips, shared, OPTIONS)


def test_scoring_never_imports_grad_cam() -> None:
    code = (
        "import sys, numpy as np\n"
        "import deepfake_detect.inference.predict, deepfake_detect.inference.media_scoring\n"
        "from deepfake_detect.models import build_detector\n"
        "from deepfake_detect.inference.predictor import LoadedModel\n"
        "from deepfake_detect.inference.options import ScoringOptions\n"
        "m = LoadedModel(build_detector({'name': 'timm', 'timm_name': 'test_resnet', "
        "'input_size': 32}))\n"
        "m.score_crops([np.zeros((40, 40, 3), np.uint8)], ScoringOptions(num_workers=0, "
        "device='cpu', progress=False))\n"
        "assert 'pytorch_grad_cam' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- the media scorer: crops and progress -------------------------------------------------------


def test_media_scorer_keeps_crops_and_reports_progress(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LoadedModel(build_detector(
        {"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval())
    settings = PrepareConfig.model_validate(
        {"frames": {"count": 4}, "detect": {"batch_size": 2}, "crop": {"size": 32, "select": "all"}})
    scorer = MediaScorer(model, settings, face_detector=BrightSquare(), options=OPTIONS)
    video = write_video(tmp_path / "v.mp4", square_frames(12, empty=(0,)))

    calls: list[tuple[int, int]] = []
    result = scorer.score(video, keep_crops=True, progress=lambda d, t: calls.append((d, t)))
    assert result.faces == len(result.per_face) == len(result.crops) >= 3
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in result.crops)
    # the crops are those scored, in the order of per_face
    again = model.score_crops(result.crops, OPTIONS).scores
    assert [round(float(s), 6) for s in again] == [round(f.score, 6) for f in result.per_face]
    assert calls[-1] == (result.frames, result.frames) == (4, 4)
    assert all(t == 4 for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 4  # one call per frame at least, then the final one

    plain = scorer.score(video)
    assert plain.crops == [] and [f.score for f in plain.per_face] == [f.score for f in result.per_face]
    assert "crops=" not in repr(plain)  # arrays stay out of logs

    photo = tmp_path / "p.png"
    Image.fromarray(square_frames(1, (64, 64))[0]).save(photo)
    calls.clear()
    assert scorer.score(photo, progress=lambda d, t: calls.append((d, t))).crops == []
    assert calls and set(calls) == {(1, 1)}

    def cancel(done: int, total: int) -> None:
        raise KeyError("cancelled")

    with pytest.raises(KeyError, match="cancelled"):  # the caller's exception, not an error row
        scorer.score(video, progress=cancel)


# -- predict --explain ----------------------------------------------------------------------------


PREPARE = {"frames": {"count": 3}, "detect": {"detect_size": 640, "device": "cpu"},
           "crop": {"select": "all", "size": 48, "margin": 1.3}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return face_checkpoint(tmp_path_factory.mktemp("ckpt"), PREPARE)


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def test_predict_explain_writes_one_overlay_per_face(checkpoint: Path, shared: Path,
                                                     tmp_path: Path) -> None:
    photo = shared / "media" / "faces" / "paul_rudd.jpg"
    heat, faces_csv = tmp_path / "heat", tmp_path / "faces.csv"
    args = ["predict", "--checkpoint", str(checkpoint), str(photo), "--explain", str(heat),
            "--per-frame", str(faces_csv), "--out", str(tmp_path / "p.csv"), "--device", "cpu",
            "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    faces = _read(faces_csv)
    assert faces and list(faces[0])[-1] == "heatmap"
    assert [f["heatmap"] for f in faces] == [f"paul_rudd/00000_{f['face']}.png" for f in faces]
    assert _pngs(heat) == sorted(heat / f["heatmap"] for f in faces)  # one PNG per face row
    with Image.open(heat / faces[0]["heatmap"]) as im:
        assert im.size == (48, 48) and im.mode == "RGB"
        assert im.info.get("Software", "").startswith("deepfake-detect")
    assert f"{len(faces)} heatmaps" in " ".join(result.output.split())
    # a rerun may write into its own folder again; a user's non-empty folder needs --force
    assert runner.invoke(app, args).exit_code == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    args[args.index(str(heat))] = str(theirs)
    refused = runner.invoke(app, args)
    assert refused.exit_code != 0 and "--explain" in str(refused.exception)
    assert "not empty" in str(refused.exception)
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def test_predict_explain_crops_and_refusals(checkpoint: Path, shared: Path,
                                           tmp_path: Path) -> None:
    inputs = tmp_path / "in" / "crops"
    inputs.mkdir(parents=True)
    for path in sorted((shared / "media" / "crops" / "fake").glob("*.png"))[:3]:
        shutil.copy(path, inputs / path.name)
    twin = tmp_path / "in2" / next(inputs.glob("*.png")).name  # another input of one stem
    twin.parent.mkdir()
    shutil.copy(next(inputs.glob("*.png")), twin)
    heat = tmp_path / "heat"
    base = ["predict", "--checkpoint", str(checkpoint), "--crops", str(inputs), str(twin),
            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "p.csv")]
    result = runner.invoke(app, [*base, "--explain", str(heat)])
    assert result.exit_code == 0, result.output
    rows = _read(tmp_path / "p.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    expected = [heat / p.stem / "00000_0.png" for p in inputs.glob("*.png")]
    expected.append(heat / f"{twin.stem}~2" / "00000_0.png")
    assert _pngs(heat) == sorted(expected)  # one per crop file, the twin kept apart
    for png in expected[:-1]:
        with Image.open(png) as im, Image.open(inputs / f"{png.parent.name}.png") as crop:
            assert im.size == crop.size
    # the explain folder is never an input, nor inside one
    for folder, reason in ((tmp_path / "in", "holds the input"),
                           (inputs / "heat", "lies in the input folder")):
        refused = runner.invoke(app, [*base, "--explain", str(folder), "--force"])
        assert refused.exit_code != 0 and reason in str(refused.exception)
    assert not (inputs / "heat").exists()
