"""The inference core: one Predictor protocol for a loaded model and an ensemble, one options
object checked once, one forward step, and a loaded model that keeps its meta beside the module."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, write_face_like

from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.ensemble import Ensemble, ModelSource, load_predictor
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import (
    CropScores,
    LoadedModel,
    Scores,
    as_predictor,
    score_batch,
)
from deepfake_detect.inference.predict import PredictRequest, predict, predict_rows
from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors
from deepfake_detect.models.checkpoint import load_detector
from deepfake_detect.models.checkpoint_meta import CheckpointMeta

SRC = Path(__file__).resolve().parents[1] / "src" / "deepfake_detect"
CPU = {"num_workers": 0, "device": "cpu", "progress": False}


def _checkpoint(path: Path, *, threshold: float = 0.5, temperature: float = 1.0,
                **model) -> Path:
    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32,
                          **model}).eval()
    with torch.no_grad():  # spread the scores so that differences show
        for p in det.head.parameters():
            p.mul_(20.0)
    meta = checkpoint_meta(det, threshold=threshold,
                           experiment={"model": det.config.model_dump(mode="json")})
    meta["temperature"] = temperature
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_safetensors(det, path, meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("predictor")
    ckpt = _checkpoint(root / "m.safetensors", threshold=0.4, temperature=1.5)
    data = make_dataset(root / "data", videos_per_class=2, frames=2)
    images = sorted(data.rglob("*.png"))
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return ckpt, [*images, broken]


def _crops(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(n)]


def test_model_and_ensemble_score_the_same_inputs_with_the_same_fields(files) -> None:
    ckpt, images = files
    options = ScoringOptions(batch_size=3, **CPU)
    model = load_predictor(ckpt)
    twins = load_predictor([ckpt, ckpt])  # an ensemble of two identical members
    assert isinstance(model, LoadedModel) and isinstance(twins, Ensemble)
    assert model.input_kind == twins.input_kind == "images"
    assert model.prepare_settings() == twins.prepare_settings()

    one, both = model.score_images(images, options), twins.score_images(images, options)
    assert isinstance(one, Scores) and isinstance(both, Scores)
    assert one.scores.shape == both.scores.shape == (len(images),)
    assert set(one.errors) == set(both.errors) == {len(images) - 1}  # the broken file
    np.testing.assert_allclose(both.scores, one.scores, rtol=1e-6, atol=1e-7)
    assert one.std is None and one.members is None
    assert both.members.shape == (2, len(images))
    np.testing.assert_allclose(both.std[:-1], 0.0, atol=1e-7)  # identical members agree

    crops = _crops()
    model.place(options.device)
    twins.place(options.device)
    c1, c2 = model.score_crops(crops, options), twins.score_crops(crops, options)
    assert isinstance(c1, CropScores) and isinstance(c2, CropScores)
    assert c1.scores.shape == c2.scores.shape == (3,)
    assert c1.std is None and c1.replicates is None
    assert c2.std.shape == (3,) and c2.replicates.shape == (2, 3)
    np.testing.assert_allclose(c2.scores, c1.scores, rtol=1e-6, atol=1e-7)

    assert model.threshold == 0.4 and twins.threshold == 0.5  # each its own (or given)
    rows1 = predict_rows(model, images, options, 0.5, crops=True)
    rows2 = predict_rows(twins, images, options, crops=True)
    assert [r.filename for r in rows1] == [r.filename for r in rows2]
    assert [r.status for r in rows1] == [r.status for r in rows2]
    assert [r.label for r in rows1] == [r.label for r in rows2]
    assert all(r.score_std is None for r in rows1)
    assert all((r.score_std is None) == (r.status != "ok") for r in rows2)


def test_options_are_checked_once_before_any_work(files, monkeypatch, tmp_path) -> None:
    for bad, words in [({"batch_size": 0}, "--batch-size"), ({"batch_size": 1.5}, "--batch-size"),
                       ({"num_workers": -1}, "--workers"), ({"device": "bogus"}, "--device"),
                       ({"tta": "vflip"}, "--tta"), ({"mc_dropout": 1}, "--mc-dropout"),
                       ({"mc_dropout": -2}, "--mc-dropout"), ({"precision": "8"}, "precision"),
                       ({"precision": "16", "device": "cpu"}, "precision 16")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            ScoringOptions(**bad)
    options = ScoringOptions(tta="hflip", **CPU)
    assert options.tta.names == ["identity", "hflip"] and options.device == torch.device("cpu")
    assert options.replace(batch_size=8).tta is options.tta  # a spec passes through
    assert options.with_default_tta("scale:0.9") is options  # chosen views stay
    assert ScoringOptions(**CPU).with_default_tta("hflip").tta.names == ["identity", "hflip"]

    # what depends on the predictor is refused by it, before any file is read
    ckpt, images = files
    with pytest.raises(ConfigError, match="no dropout"):
        load_predictor(ckpt).score_images(images, ScoringOptions(mc_dropout=2, **CPU))
    with pytest.raises(ConfigError, match="ensemble"):
        load_predictor([ckpt, ckpt]).check(ScoringOptions(mc_dropout=2, **CPU))

    # a request that does not fit together fails before any model is loaded or file read
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(LoadedModel, "load", never)
    for request, words in [
        (PredictRequest(ModelSource(ckpt), images, aggregation="bogus"), "--aggregation"),
        (PredictRequest(ModelSource(ckpt), images, select="bogus"), "--select"),
        (PredictRequest(ModelSource(ckpt), images, format="bogus"), "--format"),
        (PredictRequest(ModelSource(ckpt), []), "give files"),
        (PredictRequest(ModelSource(ckpt, method="soft"), images), "--ensemble"),
        (PredictRequest(ModelSource([ckpt, ckpt], weights="1,2,3"), images), "--weights"),
        (PredictRequest(ModelSource([ckpt, ckpt], method="bogus"), images), "bogus"),
        (PredictRequest(ModelSource(ckpt), images, crops=True, detect_faces=True), "--crops"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            predict(request)
    assert not list(tmp_path.iterdir())


def test_one_forward_step_for_every_option() -> None:
    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32,
                          "drop_rate": 0.5, "uncertainty": {"enabled": True}}).eval()
    model = LoadedModel(det, temperature=2.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = score_batch(model, x, ScoringOptions(**CPU))
        variance = score_batch(model, x, ScoringOptions(**CPU), variance=True)
        views = score_batch(model, x, ScoringOptions(tta="hflip", **CPU))
        passes = score_batch(model, x, ScoringOptions(mc_dropout=3, **CPU), seed=5)
        expected = torch.sigmoid(det.fake_logit(det(x)) / 2.0)
    assert plain.passes.shape == (1, 4) and plain.log_var is None and plain.std is None
    torch.testing.assert_close(plain.mean, expected)
    torch.testing.assert_close(variance.mean, plain.mean)
    assert variance.log_var.shape == (4,)
    assert views.passes.shape == (1, 4) and not torch.allclose(views.mean, plain.mean)
    assert passes.passes.shape == (3, 4) and (passes.std > 0).all()
    assert not any(m.training for m in det.modules())


def test_loaded_model_keeps_its_meta_beside_the_module(files) -> None:
    ckpt, images = files
    model = LoadedModel.load(ckpt)
    assert model.threshold == 0.4 and model.temperature == 1.5
    assert isinstance(model.meta, CheckpointMeta) and model.meta.threshold == 0.4
    assert model.preprocessing == {"input_size": 32, "mean": list(model.module.mean),
                                   "std": list(model.module.std)}
    # nothing is glued onto the module: its own temperature stays the neutral 1.0
    for name in ("threshold", "checkpoint_meta"):
        assert not hasattr(model.module, name)
    assert model.module.temperature == 1.0 and not model.module.training

    # the older API still attaches them, and scores the same
    older = load_detector(ckpt)
    assert older.threshold == 0.4 and older.temperature == 1.5
    assert older.checkpoint_meta == model.meta
    options = ScoringOptions(**CPU)
    np.testing.assert_array_equal(as_predictor(older).score_images(images, options).scores,
                                  model.score_images(images, options).scores)
    wrapped = as_predictor(older)
    assert wrapped.threshold == 0.4 and wrapped.temperature == 1.5 and wrapped.meta == model.meta
    # a module built in code: defaults
    bare = as_predictor(build_detector({"name": "timm", "timm_name": "test_resnet",
                                        "input_size": 32}))
    assert bare.threshold == 0.5 and bare.temperature == 1.0 and bare.meta is None


def test_precision_is_an_option(files) -> None:
    ckpt, images = files
    model = LoadedModel.load(ckpt)
    auto = model.score_images(images[:4], ScoringOptions(**CPU)).scores
    full = model.score_images(images[:4], ScoringOptions(precision="32", **CPU)).scores
    half = model.score_images(images[:4], ScoringOptions(precision="bf16", **CPU)).scores
    np.testing.assert_array_equal(auto, full)  # on the CPU auto is full precision
    np.testing.assert_allclose(half, full, atol=0.05)


def test_predict_request_writes_what_the_older_functions_wrote(files, tmp_path) -> None:
    from deepfake_detect.inference.predict import predict_files, write_predictions

    ckpt, images = files
    report = predict(PredictRequest(ModelSource(ckpt), images, options=ScoringOptions(**CPU),
                                    crops=True, out=tmp_path / "p.csv"))
    assert report.threshold == 0.4 and report.counts() == {"ok": len(images) - 1, "no_face": 0,
                                                           "error": 1}
    older = predict_files(load_detector(ckpt), images, threshold=0.4, num_workers=0,
                          device="cpu", progress=False, crops=True)
    write_predictions(older, tmp_path / "older.csv")
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "older.csv").read_bytes()
    with open(tmp_path / "p.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["filename", "label", "score", "frames", "faces", "error",
                                        "status"]


def test_no_ensemble_branching_outside_the_predictors() -> None:
    """Callers hold a Predictor; only the two implementations know which one they are."""
    allowed = {SRC / "inference" / "ensemble.py", SRC / "inference" / "predictor.py"}
    patterns = [re.compile(r"isinstance\([^)]*\bEnsemble\b"), re.compile(r"\bensemble is (not )?None"),
                re.compile(r"\bis_ensemble\b(?!_file)")]
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path in allowed:
            continue
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if any(p.search(line) for p in patterns):
                found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, "ensemble-or-model branches outside the predictors:\n" + "\n".join(found)


def test_a_detector_module_can_still_be_given_everywhere(tmp_path) -> None:
    """The older entry points take a bare module (wrapped once, as a LoadedModel)."""
    from deepfake_detect.inference.scoring import score_files

    torch.manual_seed(1)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    path = tmp_path / "a.png"
    write_face_like(path, 1, np.random.default_rng(0), 32)
    result = score_files(det, [path], **CPU)
    direct = LoadedModel(det).score_images([path], ScoringOptions(**CPU))
    np.testing.assert_array_equal(result.scores, direct.scores)
