"""Test-time augmentation views, Monte-Carlo dropout, and their plumbing into predict/evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import make_dataset, tiny_config
from deepfake_detect.cli import app
from deepfake_detect.config import load_config
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.scoring import score_files
from deepfake_detect.inference.tta import (
    TTASpec,
    dropout_modules,
    mc_dropout_probabilities,
    tta_probabilities,
)
from deepfake_detect.models.detector import IMAGENET_MEAN, IMAGENET_STD, Detector, ModelConfig
from deepfake_detect.models.registry import build_detector

runner = CliRunner()
ALL_VIEWS = "hflip,scale:0.9,scale:1.1,five_crop"


class PooledDetector(Detector):
    """Conv (BatchNorm) -> global mean pool -> [dropout] -> linear. With a left-right symmetric
    kernel the pooled features, hence the score, do not change under a horizontal flip."""

    def __init__(self, dropout: float = 0.0, symmetric: bool = True) -> None:
        super().__init__(ModelConfig(name="pooled"), 16, IMAGENET_MEAN, IMAGENET_STD)
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        if symmetric:
            with torch.no_grad():
                w = self.conv.weight
                w.copy_((w + w.flip(-1)) / 2)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(self.drop(feats))


def timm_detector(drop_rate: float) -> Detector:
    torch.manual_seed(0)
    return build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32,
                           "drop_rate": drop_rate}).eval()


def test_every_view_keeps_the_batch_shape():
    spec = TTASpec.parse(ALL_VIEWS)
    assert spec.names[:2] == ["identity", "hflip"] and len(spec) == 2 + 2 + 5
    for shape in ((2, 3, 32, 32), (3, 3, 31, 27)):
        x = torch.randn(shape)
        for view in spec.views:
            y = view.apply(x)
            assert y.shape == x.shape, view.name
            assert torch.isfinite(y).all()
    x = torch.randn(2, 3, 32, 32)
    # views other than identity actually change the batch
    assert all(not torch.equal(v.apply(x), x) for v in spec.views[1:])


def test_spec_parsing_and_errors():
    assert TTASpec.parse("default").names == ["identity", "hflip"]
    assert TTASpec.parse("hflip, hflip").names == ["identity", "hflip"]
    assert TTASpec.parse("five_crop:0.8").names[1] == "crop:tl:0.8"
    for bad in ("vflip", "scale", "scale:abc", "scale:0", "five_crop:1.5", ""):
        with pytest.raises(ConfigError, match="--tta"):
            TTASpec.parse(bad)


def test_hflip_of_a_symmetric_image_is_the_identity():
    half = torch.randn(2, 3, 16, 8)
    x = torch.cat([half, half.flip(-1)], dim=-1)
    hflip = TTASpec.parse("hflip").views[1]
    assert torch.equal(hflip.apply(x), x)
    skewed = torch.randn(1, 3, 16, 16)
    assert not torch.equal(hflip.apply(skewed), skewed)
    assert torch.equal(hflip.apply(hflip.apply(skewed)), skewed)


def test_tta_is_the_mean_of_the_views():
    detector = timm_detector(0.0)
    x = torch.randn(3, 3, 32, 32)
    spec = TTASpec.parse(ALL_VIEWS)
    with torch.no_grad():
        manual = torch.stack([detector.predict_proba(v.apply(x)) for v in spec.views]).mean(0)
        got = tta_probabilities(detector, x, spec)
        chunked = tta_probabilities(detector, x, spec, max_batch=4)
    assert got.shape == (3,)
    torch.testing.assert_close(got, manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, manual, atol=1e-5, rtol=1e-5)


def test_hflip_tta_of_a_flip_invariant_detector_changes_no_score(tmp_path):
    data = make_dataset(tmp_path / "d", videos_per_class=2, frames=2, size=16)
    files = sorted(data.rglob("*.png"))
    detector = PooledDetector().eval()
    plain = score_files(detector, files, batch_size=3, num_workers=0, progress=False)
    flipped = score_files(detector, files, batch_size=3, num_workers=0, progress=False,
                          tta="hflip")
    assert plain.std is None and flipped.std is None
    assert plain.ok.all()
    torch.testing.assert_close(torch.tensor(flipped.scores), torch.tensor(plain.scores),
                               atol=1e-6, rtol=1e-6)
    # a detector that is not flip-invariant does change
    skew = PooledDetector(symmetric=False).eval()
    with torch.no_grad():
        skew.conv.weight[:, :, :, 0] += 1.0
    a = score_files(skew, files, batch_size=3, num_workers=0, progress=False)
    b = score_files(skew, files, batch_size=3, num_workers=0, progress=False, tta="hflip")
    assert abs(a.scores - b.scores).max() > 1e-6


@pytest.mark.parametrize("make", [lambda: timm_detector(0.3), lambda: PooledDetector(0.5).eval()])
def test_mc_dropout_spreads_scores_and_leaves_the_model_as_it_was(make):
    detector = make()
    x = torch.randn(4, 3, detector.input_size, detector.input_size)
    assert dropout_modules(detector)
    modes = {name: m.training for name, m in detector.named_modules()}
    stats = {k: v.clone() for k, v in detector.state_dict().items()}
    bn_modes: list[bool] = []
    hooks = [m.register_forward_hook(lambda m, i, o: bn_modes.append(m.training))
             for m in detector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        mean, std = mc_dropout_probabilities(detector, x, 6)
        again, _ = mc_dropout_probabilities(detector, x, 6)
        other, _ = mc_dropout_probabilities(detector, x, 6, seed=1)
        plain = detector.predict_proba(x)
    for h in hooks:
        h.remove()
    assert mean.shape == std.shape == (4,)
    assert (std > 0).all()
    assert torch.equal(mean, again)  # seeded
    assert not torch.equal(mean, other)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG untouched
    assert bn_modes and not any(bn_modes)  # normalisation stayed in eval during the passes
    assert {name: m.training for name, m in detector.named_modules()} == modes
    for k, v in detector.state_dict().items():
        assert torch.equal(v, stats[k]), k  # BatchNorm running stats unchanged
    # after MC passes, plain inference is deterministic again
    assert torch.equal(detector.predict_proba(x), plain)


def test_mc_dropout_without_dropout_is_refused():
    with pytest.raises(ConfigError, match=r"'timm'.*model\.drop_rate"):
        mc_dropout_probabilities(timm_detector(0.0), torch.randn(2, 3, 32, 32), 4)
    with pytest.raises(ConfigError, match="at least 2"):
        mc_dropout_probabilities(timm_detector(0.3), torch.randn(2, 3, 32, 32), 1)


def test_score_files_with_mc_dropout_and_tta(tmp_path):
    data = make_dataset(tmp_path / "d", videos_per_class=2, frames=2)
    files = sorted(data.rglob("*.png")) + [tmp_path / "missing.png"]
    detector = timm_detector(0.3)
    result = score_files(detector, files, batch_size=3, num_workers=0, progress=False,
                         tta="hflip", mc_dropout=3)
    assert result.std is not None and result.std.shape == (len(files),)
    assert (result.std[:-1] > 0).all() and len(result.errors) == 1
    assert torch.isnan(torch.tensor(result.std[-1]))
    again = score_files(detector, files, batch_size=3, num_workers=0, progress=False,
                        tta="hflip", mc_dropout=3)
    assert (again.scores[:-1] == result.scores[:-1]).all()


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory) -> tuple[Path, Path]:
    from deepfake_detect.training.train import train

    tmp = tmp_path_factory.mktemp("tta")
    data = make_dataset(tmp / "toy", videos_per_class=2, frames=2, splits=("train", "val", "test"))
    config = tiny_config(data, tmp / "runs", epochs=1)
    config["model"]["drop_rate"] = 0.3
    result = train(load_config(base=config), out=tmp / "run")
    return result.run_dir / "model.safetensors", data


def test_predict_mc_dropout_writes_score_std(dropout_run, tmp_path):
    model, data = dropout_run
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", "--checkpoint", str(model), str(data / "test"),
                                 "--mc-dropout", "4", "--tta", "hflip", "--out", str(out),
                                 "--workers", "0", "--crops"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["filename", "label", "score", "frames", "faces", "error", "score_std",
                             "status"]
    assert len(rows) == 8 and all(float(r["score_std"]) > 0 for r in rows)
    plain = tmp_path / "plain.csv"
    runner.invoke(app, ["predict", "--checkpoint", str(model), str(data / "test"), "--out",
                        str(plain), "--workers", "0", "--crops"])
    assert "score_std" not in plain.read_text().splitlines()[0]


def test_predict_takes_tta_on_videos(dropout_run, tmp_path):
    """Videos go through the face pipeline with --tta / --mc-dropout (formerly refused); an
    unreadable one is an error row, not a failure, and a bad spec still fails."""
    model, _ = dropout_run
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", "--checkpoint", str(model), str(video),
                                 "--tta", "hflip", "--mc-dropout", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader(open(out, newline="")))
    assert row["error"].startswith("unreadable") and row["score"] == ""
    bad = runner.invoke(app, ["predict", "--checkpoint", str(model), str(video), "--tta", "vflip"])
    assert bad.exit_code != 0 and "--tta" in str(bad.exception)


def test_evaluate_tta_records_the_views(dropout_run, tmp_path):
    model, data = dropout_run
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(model), "--data", str(data),
                                 "--out", str(out), "--workers", "0", "--no-plots",
                                 "--tta", "hflip", "--mc-dropout", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "toy" / "metrics.json").read_text())
    assert metrics["tta"] == ["identity", "hflip"] and metrics["mc_dropout"] == 2
    with open(out / "toy" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "video", "label", "score", "score_std"] and len(rows) == 8
    bad = runner.invoke(app, ["evaluate", "--checkpoint", str(model), "--data", str(data),
                              "--out", str(tmp_path / "e2"), "--tta", "vflip"])
    assert bad.exit_code != 0 and "--tta" in str(bad.exception)


def test_recipe_tta_is_used_after_training_and_by_evaluate(toy_dataset, tmp_path):
    from deepfake_detect.evaluation.evaluate import evaluate_checkpoint
    from deepfake_detect.training.train import train

    base = tiny_config(toy_dataset, tmp_path / "runs", epochs=1)
    base["eval"] = {"tta": "hflip", "plots": False}
    result = train(load_config(base=base), out=tmp_path / "run")
    assert result.test_metrics["tta"] == ["identity", "hflip"]
    metrics = evaluate_checkpoint(result.run_dir / "model.safetensors", [toy_dataset],
                                  tmp_path / "eval", num_workers=0, progress=False, plots=False)
    assert all(m["tta"] == ["identity", "hflip"] for m in metrics.values())
    base["eval"]["tta"] = "vflip"
    with pytest.raises(ConfigError, match="--tta"):
        train(load_config(base=base), out=tmp_path / "bad")
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before training
