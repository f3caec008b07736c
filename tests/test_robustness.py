"""Robustness sweeps: perturbation specs, several views of each decoded image scored in one
pass (the clean view bit-identical to a plain scoring), and the sweep's CSV / JSON / curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset
from deepfake_detect.data import datasets as datasets_module
from deepfake_detect.data.datasets import FaceImageDataset
from deepfake_detect.data.images import load_rgb
from deepfake_detect.data.perturb import (
    Perturbation,
    PerturbView,
    parse_perturbations,
    perturb_image,
    sweep_views,
)
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import ConfigError
from deepfake_detect.evaluation.evaluate import evaluate_samples
from deepfake_detect.evaluation.robustness import (
    COLUMNS,
    plot_robustness_curves,
    read_robustness_rows,
    robustness_sweep,
)
from deepfake_detect.inference import predictor as predictor_module
from deepfake_detect.inference.ensemble import Ensemble, Member
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models import build_detector

CPU = {"num_workers": 0, "device": "cpu", "progress": False}


def _model(seed: int = 0, input_size: int = 32, **cfg) -> LoadedModel:
    torch.manual_seed(seed)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": input_size,
                          **cfg}).eval()
    with torch.no_grad():  # spread the scores so that perturbations show
        for p in det.head.parameters():
            p.mul_(20.0)
    return LoadedModel(det)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    """8 labelled 48 px crops, 2 videos per class of 2 frames, and one unreadable file."""
    root = make_dataset(tmp_path_factory.mktemp("robust") / "toy", videos_per_class=2, frames=2,
                        size=48)
    found = [Sample(path=p, label=int(p.parent.name == "fake"),
                    video=f"{p.parent.name}/{p.stem.split('_frame')[0]}")
             for p in sorted(root.rglob("*.png"))]
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return [*found, Sample(path=broken, label=0, video="broken")]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return _model()


# -- specs ------------------------------------------------------------------------------------


def test_specs_parse_with_kinds_and_severities() -> None:
    jpeg = Perturbation.parse("jpeg:90,70,50,30")
    assert jpeg == Perturbation("jpeg", (90, 70, 50, 30)) and jpeg.text == "jpeg:90,70,50,30"
    assert Perturbation.parse(" Blur : 1, 2.5 ").severities == (1.0, 2.5)
    found = parse_perturbations(["resize:0.75,0.5,0.25", "noise:0.02,0.05", "contrast:0.5",
                                 "brightness:1.5"])
    assert [p.kind for p in found] == ["resize", "noise", "contrast", "brightness"]
    # values that change nothing name the clean image (always severity 0): dropped
    assert Perturbation.parse("blur:0,1").severities == (1.0,)
    assert Perturbation.parse("contrast:1,0.5").severities == (0.5,)
    views = sweep_views(parse_perturbations("jpeg:50,30"))
    assert [v.name for v in views] == ["jpeg:50", "jpeg:30"]


@pytest.mark.parametrize("text, expected", [
    ("jpg:90", "did you mean 'jpeg'"),
    ("sharpen:2", "unknown kind 'sharpen'"),
    ("jpeg", "no severity"),
    ("jpeg:", "no severity"),
    ("blur:1,,2", "empty severity"),
    ("blur:abc", "severity 'abc'"),
    ("jpeg:0", "whole number from 1 to 100"),
    ("jpeg:101", "whole number from 1 to 100"),
    ("jpeg:50.5", "whole number"),
    ("resize:1.5", "(0, 1]"),
    ("resize:0", "(0, 1]"),
    ("noise:2", "[0, 1]"),
    ("blur:-1", "blur sigma"),
    ("contrast:-0.5", "contrast factor"),
    ("blur:nan", "blur sigma"),
    ("jpeg:50,50", "given twice"),
    ("blur:0", "clean image"),
])
def test_bad_specs_raise_one_line_errors_naming_the_text(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Perturbation.parse(text)
    message = str(info.value)
    assert expected in message and repr(text) in message and "\n" not in message


def test_a_kind_given_twice_is_refused_with_the_merged_spec() -> None:
    with pytest.raises(ConfigError, match="jpeg:90,50"):
        parse_perturbations(["jpeg:90", "blur:1", "jpeg:50"])


# -- applying ---------------------------------------------------------------------------------


def test_perturbations_keep_the_size_are_deterministic_and_jpeg_changes_pixels(samples) -> None:
    image = load_rgb(samples[0].path)
    clean = np.asarray(image)
    for kind, severity in [("jpeg", 30), ("blur", 2.0), ("resize", 0.25), ("noise", 0.05),
                           ("contrast", 0.5), ("brightness", 1.5)]:
        out = perturb_image(image, kind, severity, index=3)
        assert out.mode == "RGB" and out.size == image.size, kind
        assert not np.array_equal(np.asarray(out), clean), kind
        again = perturb_image(image, kind, severity, index=3)
        assert np.array_equal(np.asarray(out), np.asarray(again)), kind  # a rerun is identical
    assert np.array_equal(np.asarray(image), clean)  # the input is left alone
    # the noise is the sample's own: another index draws another pattern
    assert not np.array_equal(np.asarray(perturb_image(image, "noise", 0.05, index=3)),
                              np.asarray(perturb_image(image, "noise", 0.05, index=4)))
    assert perturb_image(image, "blur", 0.0) is image  # an identity value changes nothing


def test_the_dataset_decodes_once_and_stacks_the_clean_view_first(samples, model,
                                                                   monkeypatch) -> None:
    decoded: list[Path] = []

    def counting(path):
        decoded.append(Path(path))
        return load_rgb(path)

    monkeypatch.setattr(datasets_module, "load_rgb", counting)
    views = [PerturbView("jpeg", 30), PerturbView("blur", 2.0), PerturbView("noise", 0.05)]
    plain = FaceImageDataset(samples[:2], model.transform)
    viewed = FaceImageDataset(samples[:2], model.transform, views)
    decoded.clear()
    item = viewed[1]
    assert decoded == [samples[1].path]  # one decode for all four views
    x = item["image"]
    assert x.shape == (4, 3, 32, 32) and viewed.n_views == 4
    assert torch.equal(x[0], plain[1]["image"])  # the clean view is the plain input
    assert not torch.equal(x[1], x[0])  # JPEG 30 changes what the model sees
    # each view is exactly what the model would see of the perturbed file (the views go
    # through the transform together, with the same values as one at a time)
    image = load_rgb(samples[1].path)
    for i, view in enumerate(views, start=1):
        assert torch.equal(x[i], model.transform(perturb_image(image, view.kind, view.severity,
                                                               index=1))), view.name
    assert not np.array_equal(np.asarray(perturb_image(image, "jpeg", 30)), np.asarray(image))
    noisy = viewed[1]["image"][3]
    assert torch.equal(noisy, x[3])  # seeded by the sample index: the same again


def test_any_callable_serves_as_view_and_transform(samples) -> None:
    def to_tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)

    mirror = [lambda im: im.transpose(Image.FLIP_LEFT_RIGHT)]  # no index: called view(image)
    flip = FaceImageDataset(samples[:1], to_tensor, mirror)
    x = flip[0]["image"]
    assert x.shape == (2, 3, 48, 48) and torch.equal(x[1], x[0].flip(-1))


# -- scoring ----------------------------------------------------------------------------------


def test_score_images_with_views_keeps_the_clean_scores_bit_identical(samples, model,
                                                                      monkeypatch) -> None:
    options = ScoringOptions(batch_size=6, **CPU)
    plain = model.score_images(samples, options)

    decodes = []
    monkeypatch.setattr(datasets_module, "load_rgb",
                        lambda path: (decodes.append(path), load_rgb(path))[1])
    batches = []
    score_batch = predictor_module.score_batch

    def counting(m, x, *args, **kwargs):
        batches.append(len(x))
        return score_batch(m, x, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "score_batch", counting)
    # a severity-0 view (contrast 1: the identity) and JPEG 30
    views = [PerturbView("contrast", 1.0), PerturbView("jpeg", 30)]
    result = model.score_images(samples, options, views=views)

    assert len(decodes) == len(samples)  # each file decoded once for all views
    assert max(batches) <= options.batch_size  # about batch_size images per forward, not 3x
    assert result.views.shape == (3, len(samples))
    np.testing.assert_array_equal(result.scores, plain.scores)  # bit-identical, NaN included
    np.testing.assert_array_equal(result.views[0], plain.scores)
    np.testing.assert_array_equal(result.views[1], plain.scores)  # severity 0 = clean, exactly
    ok = plain.ok
    assert not np.array_equal(result.views[2][ok], plain.scores[ok])  # JPEG 30 moves scores
    assert set(result.errors) == set(plain.errors) == {len(samples) - 1}
    assert np.isnan(result.views[:, -1]).all()  # the broken file: NaN in every view
    assert plain.views is None


def test_views_work_with_tta_and_mc_dropout(samples) -> None:
    files = samples[:4]
    model = _model(drop_rate=0.5)
    views = [PerturbView("blur", 2.0)]
    tta = ScoringOptions(batch_size=4, tta="hflip", **CPU)
    np.testing.assert_array_equal(model.score_images(files, tta, views=views).views[0],
                                  model.score_images(files, tta).scores)
    mc = model.score_images(files, ScoringOptions(batch_size=4, mc_dropout=3, **CPU), views=views)
    assert mc.views.shape == (2, 4) and mc.std.shape == (4,) and np.isfinite(mc.std).all()


def test_an_ensemble_applies_the_views_before_each_members_transform(samples) -> None:
    members = [Member("a", "a", _model(0, 32), 1.0), Member("b", "b", _model(1, 40), 2.0)]
    ensemble = Ensemble(members, "soft")
    options = ScoringOptions(batch_size=4, **CPU)
    plain = ensemble.score_images(samples, options)
    views = [PerturbView("jpeg", 30), PerturbView("resize", 0.5)]
    result = ensemble.score_images(samples, options, views=views)
    assert result.views.shape == (3, len(samples))
    np.testing.assert_array_equal(result.scores, plain.scores)
    np.testing.assert_array_equal(result.views[0], plain.scores)
    np.testing.assert_array_equal(result.members, plain.members)
    np.testing.assert_array_equal(result.std, plain.std)
    # each view is the weighted mean of the members' scores of that view
    by_member = [m.model.score_images(samples, options, views=views).views for m in members]
    np.testing.assert_allclose(result.views, (by_member[0] + 2 * by_member[1]) / 3, rtol=1e-12)
    assert np.isnan(result.views[:, -1]).all()


# -- the sweep --------------------------------------------------------------------------------


def test_the_sweep_writes_rows_curves_and_its_clean_rows_are_the_plain_metrics(
        samples, model, tmp_path) -> None:
    options = ScoringOptions(batch_size=8, **CPU)
    specs = ["jpeg:90,30", "blur:1,2", "noise:0.05"]
    out = robustness_sweep(model, samples, specs, tmp_path / "toy", threshold=0.4,
                           video_aggregation="mean", options=options, name="toy")
    folder = tmp_path / "toy" / "robustness"
    assert out["dir"] == folder and out["perturbations"] == specs
    assert sorted(p.name for p in folder.iterdir()) == [
        "robustness.csv", "robustness.json", "robustness_blur.png", "robustness_jpeg.png",
        "robustness_noise.png"]
    assert all(Image.open(p).size[0] > 100 for p in out["plots"].values())

    with open(out["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    # one row per (perturbation, severity incl. clean, level)
    keys = [(r["perturbation"], r["severity"], r["level"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * (3 + 3 + 2)
    assert [k for k in keys if k[0] == "jpeg"] == [
        ("jpeg", s, lvl) for s in ("0", "90", "30") for lvl in ("frame", "video")]

    report = json.loads(out["json"].read_text())
    assert report["n_samples"] == len(samples) - 1 and report["skipped"] == 1
    assert len(report["rows"]) == len(rows)

    # severity 0 is the plain evaluation of the same samples
    plain = evaluate_samples(model, samples, tmp_path / "plain", threshold=0.4,
                             video_aggregation="mean", plots=False, options=options)
    for kind in ("jpeg", "blur", "noise"):
        clean = out["metrics"][kind][0]
        assert clean["severity"] == 0
        for key in ("auc", "eer", "ap", "acc", "acc_at_threshold", "n", "confusion"):
            assert clean["frame"][key] == plain["frame"][key], key
            assert clean["video"][key] == plain["video"][key], key
    # JPEG 30 moves the scores (the accuracy at the threshold or the ranking changes)
    jpeg30 = out["metrics"]["jpeg"][2]["frame"]
    assert jpeg30["brier"] != out["metrics"]["jpeg"][0]["frame"]["brier"]


def test_the_sweep_refuses_clip_detectors_and_empty_specs(samples, model, tmp_path) -> None:
    class Clips:
        input_kind = "clips"
        name = "dual_stream"

    with pytest.raises(ConfigError, match="dual_stream scores video clips"):
        robustness_sweep(Clips(), samples, ["jpeg:50"], tmp_path, 0.5)
    with pytest.raises(ConfigError, match="no perturbation"):
        robustness_sweep(model, samples, [], tmp_path, 0.5)


def test_curves_of_several_checkpoints_on_one_plot(samples, model, tmp_path) -> None:
    options = ScoringOptions(batch_size=8, **CPU)
    out = robustness_sweep(model, samples[:-1], ["jpeg:70", "resize:0.5"], tmp_path / "a", 0.5,
                           options=options)
    back = read_robustness_rows(tmp_path / "a" / "robustness")  # the folder or the CSV
    assert [(r["perturbation"], r["severity"], r["level"], r["n"]) for r in back] == [
        (r["perturbation"], r["severity"], r["level"], r["n"]) for r in out["rows"]]
    np.testing.assert_allclose([r["auc"] for r in back], [r["auc"] for r in out["rows"]],
                               atol=1e-6)

    other = [{**r, "auc": r["auc"] * 0.9} for r in out["rows"]]
    jpeg = {name: [r for r in rows if r["perturbation"] == "jpeg"]
            for name, rows in (("a", back), ("b", other))}
    path = plot_robustness_curves(jpeg, tmp_path / "cdf_jpeg.png", title="cdf: jpeg")
    assert path == tmp_path / "cdf_jpeg.png" and Image.open(path).size[0] > 100
    # rows of several perturbations: a panel each, in one figure
    both = plot_robustness_curves({"a": back, "b": other}, tmp_path / "all.png", level="video")
    assert Image.open(both).size[0] > Image.open(path).size[0]
    with pytest.raises(ConfigError, match="level"):
        plot_robustness_curves(jpeg, tmp_path / "x.png", level="clip")
