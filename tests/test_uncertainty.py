"""The variance head (model.uncertainty): config, marginalised loss, training, checkpoints, scoring."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_dataset, tiny_config

from deepfake_detect.config import load_config
from deepfake_detect.config.schema import StrategyConfig
from deepfake_detect.data.datasets import FaceImageDataset
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.inference.scoring import score_files
from deepfake_detect.models import build_detector, export_safetensors, load_checkpoint
from deepfake_detect.models.checkpoint import checkpoint_meta
from deepfake_detect.models.strategies import apply_strategy
from deepfake_detect.models.timm_detector import INITIAL_LOG_VAR, LOG_VAR_LIMIT
from deepfake_detect.training.losses import BinaryLoss, logits_like_head, marginal_fake_logit
from deepfake_detect.training.module import DetectorModule
from deepfake_detect.training.train import train

TINY = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}
ON = {"uncertainty": {"enabled": True}}


def _build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_detector({**TINY, **overrides})


def _module(tmp_path, augment: dict | None = None, **model):
    config = tiny_config(tmp_path, tmp_path / "runs")
    config["model"].update(model)
    config["data"]["augment"] = {"hflip": 0.0, **(augment or {})}
    cfg = load_config(base=config)
    torch.manual_seed(0)
    module = DetectorModule(build_detector(cfg.model), cfg)
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    return module, logged


# -- the detector -------------------------------------------------------------------------------


def test_off_by_default_the_detector_is_unchanged():
    plain, off = _build(), _build(uncertainty={"enabled": False})
    assert off.config.uncertainty.enabled is False and plain.config.uncertainty.samples == 16
    assert off.variance_head is None and not off.predicts_variance
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert not any(k.startswith("variance_head") for k in off.state_dict())
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), off.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), off(x), rtol=0, atol=0)
        logits, log_var = off.forward_with_variance(x)
        torch.testing.assert_close(logits, off(x), rtol=0, atol=0)
        assert log_var is None
        assert off.classify_with_variance(off.extract_features(x))[1] is None


@pytest.mark.parametrize("extra", [{}, {"num_classes": 1}, {"attention": "se"}])
def test_variance_head_shapes_and_training_role(extra):
    det = _build(**ON, **extra).eval()
    assert det.predicts_variance and isinstance(det.variance_head, torch.nn.Linear)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = det(x)
        assert logits.shape == (4, det.num_classes)  # forward keeps returning logits only
        calls = []
        if det.attention is not None:
            det.attention.register_forward_hook(lambda *a: calls.append(1))
        mean, log_var = det.classify_with_variance(det.extract_features(x))
    torch.testing.assert_close(mean, logits)
    assert log_var.shape == (4,) and torch.isfinite(log_var).all()
    # Zero weights: every input starts at the same, modest variance.
    torch.testing.assert_close(log_var, torch.full((4,), INITIAL_LOG_VAR))
    if det.attention is not None:
        assert calls == [1]  # the attention block runs once for both heads
    assert {"variance_head.weight", "variance_head.bias"} <= det.head_parameter_names()
    # It trains with the head under the feature_extractor strategy.
    apply_strategy(det, StrategyConfig(name="feature_extractor"))
    assert det.variance_head.weight.requires_grad
    assert not any(p.requires_grad for p in det.backbone.parameters())
    assert "variance_head" not in det.frozen_children and "backbone" in det.frozen_children


def test_log_variance_is_bounded_without_losing_its_gradient():
    det = _build(**ON)
    with torch.no_grad():
        det.variance_head.bias.fill_(1e4)
    features = det.extract_features(torch.randn(2, 3, 32, 32)).detach()
    _, log_var = det.classify_with_variance(features)
    assert (log_var <= LOG_VAR_LIMIT).all() and torch.isfinite(log_var.exp()).all()
    with torch.no_grad():
        det.variance_head.bias.fill_(30.0)  # beyond the bound, where clamp() would give 0
    _, log_var = det.classify_with_variance(features)
    log_var.sum().backward()
    assert det.variance_head.bias.grad.abs().item() > 0


# -- the marginalised loss ---------------------------------------------------------------------


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_marginal_logit_without_variance_is_the_logit():
    z = torch.tensor([-6.0, -1.0, 0.0, 0.5, 4.0])
    s = marginal_fake_logit(z, torch.full_like(z, -40.0), 16, generator=_seeded())
    torch.testing.assert_close(s, z, atol=1e-5, rtol=0)


def test_marginal_logit_is_the_expected_probability_under_noise():
    z = torch.tensor([-3.0, -1.0, 0.5, 3.0])
    var = torch.tensor([0.5, 4.0, 1.0, 20.0])
    s = marginal_fake_logit(z, var.log(), 20000, generator=_seeded())
    # Gauss-Hermite quadrature of E[sigmoid(z + sqrt(var) * eps)], eps ~ N(0, 1).
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    expected = [
        float((weights / math.sqrt(math.pi) / (1 + np.exp(-(zi + math.sqrt(2 * vi) * nodes)))).sum())
        for zi, vi in zip(z.tolist(), var.tolist())
    ]
    np.testing.assert_allclose(torch.sigmoid(s).numpy(), expected, atol=0.01)
    # Noise pulls P(fake) towards 1/2: a large variance shrinks the logit.
    assert ((s.abs() < z.abs()) & (torch.sign(s) == torch.sign(z))).all()


def test_marginal_logit_is_reproducible_stable_and_differentiable():
    z = torch.tensor([-80.0, -2.0, 0.0, 3.0, 80.0], requires_grad=True)
    log_var = torch.tensor([10.0, 1.0, 0.0, 2.0, -10.0], requires_grad=True)
    a = marginal_fake_logit(z, log_var, 8, generator=_seeded(1))
    b = marginal_fake_logit(z, log_var, 8, generator=_seeded(1))
    c = marginal_fake_logit(z, log_var, 8, generator=_seeded(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    a.sum().backward()
    assert torch.isfinite(log_var.grad).all() and log_var.grad[:4].abs().min() > 0
    assert torch.isfinite(z.grad).all() and z.grad.abs().min() > 0
    with pytest.raises(ValueError, match="same shape"):
        marginal_fake_logit(z, log_var[:2], 8)


@pytest.mark.parametrize("num_classes,fake_index", [(1, 0), (2, 1), (2, 0)])
def test_marginal_logit_shaped_like_the_head_gives_its_probability(num_classes, fake_index):
    s = torch.tensor([-2.0, 0.0, 1.5])
    logits = logits_like_head(s, num_classes, fake_index)
    assert logits.shape == (3, num_classes)
    logp = BinaryLoss(num_classes, fake_index).log_probs(logits)  # label order: real, fake
    torch.testing.assert_close(logp, torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], dim=1))


# -- training ------------------------------------------------------------------------------------


def test_training_step_without_the_head_is_the_plain_loss(tmp_path):
    module, logged = _module(tmp_path)
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    loss = module.training_step({"image": x, "label": labels, "index": torch.arange(4)}, 0)
    expected = module.criterion(module.model(x), labels)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert "train_logit_var" not in logged


def test_training_step_marginalises_with_mixup(tmp_path):
    module, logged = _module(tmp_path, {"mixup_alpha": 1.0}, **ON)
    x, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 2
    loss = module.training_step({"image": x, "label": labels, "index": torch.arange(8)}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.model.variance_head.weight.grad.abs().sum() > 0
    assert logged["train_logit_var"].item() == pytest.approx(math.exp(INITIAL_LOG_VAR), rel=1e-5)

    # At the smallest variance (std exp(-LOG_VAR_LIMIT / 2) = 0.007) the loss is the plain one
    # up to that noise.
    with torch.no_grad():
        module.model.variance_head.bias.fill_(-LOG_VAR_LIMIT * 3)
    module.mixup = None
    loss = module.training_step({"image": x, "label": labels, "index": torch.arange(8)}, 0)
    torch.testing.assert_close(loss, module.criterion(module.model(x), labels), atol=5e-3, rtol=0)


@pytest.mark.parametrize("num_classes,loss", [(2, "ce"), (1, "bce")])
def test_variance_head_learns_where_labels_are_noise(tmp_path, num_classes, loss):
    """Cached-feature training of the heads alone: half of the samples have random labels and
    carry a flag feature; the class signal is the same for both halves. The mean logit cannot
    be near 0 for the noisy half only (it is linear in the class signal), so the marginalised
    loss can only be lowered by predicting a large variance there. (Margins: over 40 seeds the
    AUC was >= 0.92 and the mean-variance ratio >= 80.)"""
    config = tiny_config(tmp_path, tmp_path / "runs")
    config["model"].update({**ON, "num_classes": num_classes})
    config["train"]["loss"] = {"name": loss}
    cfg = load_config(base=config)
    torch.manual_seed(0)
    det = build_detector(cfg.model)
    module = DetectorModule(det, cfg)
    module.log = lambda *a, **k: None
    g = _seeded(0)
    n, d = 512, det.feature_dim
    cls = torch.randint(0, 2, (n,), generator=g)
    noisy = torch.arange(n) % 2 == 1
    features = 0.3 * torch.randn(n, d, generator=g)
    features[:, 0] = (2 * cls - 1).float() * (1 + 0.2 * torch.rand(n, generator=g))
    features[:, 1] = noisy.float() * 2 - 1
    labels = torch.where(noisy, torch.randint(0, 2, (n,), generator=g), cls)
    head = det.head_parameter_names()
    optimizer = torch.optim.Adam([p for k, p in det.named_parameters() if k in head], lr=0.02)
    det.train()
    for step in range(150):
        idx = torch.randint(0, n, (64,), generator=g)
        batch = {"features": features[idx], "label": labels[idx], "index": idx}
        optimizer.zero_grad()
        module.training_step(batch, step).backward()
        optimizer.step()
    det.eval()
    with torch.no_grad():
        logits, log_var = det.classify_with_variance(features)
    var = log_var.exp()
    assert ((det.fake_logit(logits) > 0).long() == cls)[~noisy].float().mean() > 0.9
    assert var[noisy].mean() > 10 * math.exp(INITIAL_LOG_VAR)
    assert var[noisy].mean() > 10 * var[~noisy].mean()
    ranked = (var[noisy][:, None] > var[~noisy][None, :]).float().mean()  # AUC noisy vs clean
    assert ranked > 0.85


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncertainty")
    data = make_dataset(root / "toy", videos_per_class=4, frames=2, splits=("train", "val", "test"))
    config = tiny_config(data, root / "runs", epochs=2)
    config["model"].update(ON)
    result = train(load_config(base=config), out=root / "run")
    return result, data


def test_training_run_logs_and_learns_the_variance(trained):
    result, _ = trained
    with open(result.run_dir / "metrics.csv", newline="") as fh:
        values = [float(r["train_logit_var"]) for r in csv.DictReader(fh) if r.get("train_logit_var")]
    assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    assert state["model.variance_head.weight"].abs().sum() > 0  # it started at zero
    assert state["model.variance_head.bias"].item() != pytest.approx(INITIAL_LOG_VAR, abs=1e-6)


def test_checkpoints_keep_the_variance_head(trained, tmp_path):
    result, _ = trained
    from_ckpt = load_checkpoint(result.best_checkpoint)
    exported = load_checkpoint(result.run_dir / "model.safetensors")
    assert from_ckpt.predicts_variance and exported.config.uncertainty.enabled
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = from_ckpt.forward_with_variance(x), exported.forward_with_variance(x)
    torch.testing.assert_close(a, b)
    # A random head round-trips exactly through export_safetensors / load_checkpoint.
    det = _build(**ON).eval()
    with torch.no_grad():
        det.variance_head.weight.normal_()
        before = det.forward_with_variance(x)
    back = load_checkpoint(export_safetensors(det, tmp_path / "m.safetensors", checkpoint_meta(det)))
    with torch.no_grad():
        after = back.forward_with_variance(x)
    torch.testing.assert_close(after, before)


def test_weights_without_a_variance_head_start_it_fresh(caplog):
    plain = _build(seed=1).eval()
    det = build_detector({**TINY, **ON}, weights=plain.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, log_var = det.forward_with_variance(x)
        torch.testing.assert_close(logits, plain(x))
    torch.testing.assert_close(log_var, torch.full((2,), INITIAL_LOG_VAR))
    assert "no variance head" in caplog.text


def test_fsfm_official_weights_with_a_variance_head(shared):
    folder = shared / "fixtures" / "fsfm"
    expected = torch.load(folder / "fsfm_tiny_expected.pt", weights_only=True)
    vit = {k: expected["vit"][k] for k in ("embed_dim", "depth", "num_heads", "img_size", "patch_size")}
    det = build_detector({"name": "fsfm", "vit": vit, **ON},
                         weights=folder / "fsfm_tiny_finetuned.pth").eval()
    with torch.no_grad():
        logits, log_var = det.forward_with_variance(expected["input"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    assert log_var.shape == (len(logits),) and "variance_head.weight" in det.head_parameter_names()


# -- scoring ---------------------------------------------------------------------------------------


def test_score_files_reports_the_variance(trained, tmp_path):
    result, data = trained
    det = load_checkpoint(result.best_checkpoint)
    files = sorted((data / "test").rglob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths = [files[0], broken, *files[1:]]
    out = score_files(det, paths, batch_size=2, num_workers=0, device="cpu", progress=False)
    assert out.var is not None and out.var.shape == (4,)
    assert np.isnan(out.var[1]) and np.isnan(out.scores[1])
    ok = np.array([0, 2, 3])
    assert np.isfinite(out.var[ok]).all() and (out.var[ok] > 0).all()
    # The values are the detector's own predictions for those images.
    images = FaceImageDataset([Sample(path=p, label=-1, video=str(p)) for p in files],
                              build_transform(det.preprocessing()))
    with torch.no_grad():
        logits, log_var = det.forward_with_variance(torch.stack([it["image"] for it in images]))
    np.testing.assert_allclose(out.var[ok], log_var.exp().numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.scores[ok], det.probabilities(logits).numpy(), rtol=1e-5)
    plain = score_files(det, paths, batch_size=2, num_workers=0, device="cpu", progress=False,
                        output=lambda logits: logits[:, 0])
    np.testing.assert_allclose(plain.var, out.var, rtol=1e-6)  # T = 1: same scale
    # With a temperature the default (calibrated) scores' logit is z / T: variance / T².
    det.temperature = 2.0
    scaled = score_files(det, paths, batch_size=2, num_workers=0, device="cpu", progress=False)
    np.testing.assert_allclose(scaled.var[ok], out.var[ok] / 4, rtol=1e-6)
    det.temperature = 1.0
    assert score_files(det, paths, batch_size=2, num_workers=0, device="cpu", progress=False,
                       tta="hflip").var is None
    plain_det = _build()
    assert score_files(plain_det, files, num_workers=0, device="cpu", progress=False).var is None


def test_evaluate_and_predict_report_the_variance(trained, tmp_path):
    import json

    from typer.testing import CliRunner

    from deepfake_detect.cli import app
    from deepfake_detect.evaluation.metrics import predict_labels, roc_auc

    result, data = trained
    # the test split evaluated after training: a logit_var column and the uncertainty summary
    (metrics_path,) = (result.run_dir / "test").rglob("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    with open(metrics_path.parent / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    var = np.array([float(r["logit_var"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    unc = metrics["uncertainty"]
    assert unc["mean_logit_var"] == pytest.approx(var.mean(), rel=1e-4)
    wrong = predict_labels(scores, metrics["threshold"]) != labels
    if 0 < wrong.sum() < wrong.size:
        assert unc["error_detection_auc"] == pytest.approx(roc_auc(wrong.astype(int), var), abs=1e-3)
    else:
        assert math.isnan(unc["error_detection_auc"])
    # predict: the column appears for a variance head, and only then
    files = [str(p) for p in sorted((data / "test").rglob("*.png"))[:2]]
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["predict", "--checkpoint", str(result.run_dir / "model.safetensors"),
                                   *files, "--out", str(out), "--workers", "0", "--crops"])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert "logit_var" in got[0] and all(float(r["logit_var"]) > 0 for r in got)
