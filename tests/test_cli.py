from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, make_dataset, tiny_config
from deepfake_detect.cli import app
from deepfake_detect.config import load_config
from deepfake_detect.training.train import train

runner = CliRunner()
COMMANDS = [
    "quickstart", "train", "evaluate", "predict", "export", "prepare", "synthesize", "models", "config",
    "augment-preview", "calibrate",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    data = make_dataset(tmp / "toy", splits=("train", "val", "test"))
    result = train(load_config(base=tiny_config(data, tmp / "runs")), out=tmp / "run")
    return result.run_dir, data


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output
    assert f"deepfake-detect {command}" in result.output


def test_evaluate_writes_metrics_predictions_and_plots(trained, tmp_path):
    run_dir, data = trained
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(run_dir / "model.safetensors"),
                                 "--data", str(data), "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "toy" / "metrics.json").read_text())
    assert metrics["frame"]["n"] == 36  # the test split only (--split auto)
    assert metrics["video"]["n_videos"] == 12
    assert set(metrics["frame"]) >= {"auc", "eer", "ap", "acc", "precision", "recall", "f1", "macro_f1", "confusion"}
    with open(out / "toy" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "video", "label", "score"] and len(rows) == 36
    for name in ("roc.png", "pr.png", "confusion.png", "score_hist.png"):
        assert (out / "toy" / name).stat().st_size > 1000
    info = json.loads((out / "run.json").read_text())
    assert info["git_commit"] and info["deepfake_detect"]
    assert (out / "config.yaml").is_file()  # the training config the checkpoint carries


def test_evaluate_all_split_counts_every_image(trained, tmp_path):
    run_dir, data = trained
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt"),
                                 "--data", str(data), "--out", str(out), "--split", "all",
                                 "--workers", "0", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "toy" / "metrics.json").read_text())["frame"]["n"] == 108


def test_predict_reports_bad_files_and_goes_on(trained, tmp_path):
    run_dir, data = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    inputs = [str(data / "test" / "fake"), str(data / "test" / "real"), str(bad),
              str(tmp_path / "missing.jpg")]
    result = runner.invoke(app, ["predict", "--checkpoint", str(run_dir / "model.safetensors"),
                                 *inputs, "--out", str(out), "--json", str(tmp_path / "p.json"),
                                 "--workers", "0", "--threshold", "0.3", "--crops"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["filename", "label", "score", "frames", "faces", "error", "status"]
    by_name = {Path(r["filename"]).name: r for r in rows}
    assert by_name["broken.png"]["error"] and by_name["broken.png"]["score"] == ""
    assert "no such file" in by_name["missing.jpg"]["error"]
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 36
    assert all(r["label"] == str(int(float(r["score"]) > 0.3)) for r in scored)
    fake = [float(r["score"]) for r in scored if "/fake/" in r["filename"]]
    real = [float(r["score"]) for r in scored if "/real/" in r["filename"]]
    assert sum(fake) / len(fake) > sum(real) / len(real)  # the toy task is learnt
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(rows)


def test_predict_submission_is_exactly_filename_label(trained, tmp_path):
    run_dir, data = trained
    bad = tmp_path / "zz_broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "submission.csv"
    inputs = [str(data / "test" / "real"), str(bad), str(data / "test" / "fake")]
    result = runner.invoke(app, ["predict", "--checkpoint", str(run_dir / "model.safetensors"),
                                 *inputs, "--format", "submission", "--out", str(out),
                                 "--workers", "0", "--fail-label", "0", "--crops"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "filename,label"
    rows = [line.split(",") for line in lines[1:]]
    expected = sorted(p.name for p in (data / "test").rglob("*.png")) + ["zz_broken.png"]
    assert [name for name, _ in rows] == sorted(expected)  # every input once, sorted, with extension
    assert all(label in ("0", "1") for _, label in rows)
    assert dict(rows)["zz_broken.png"] == "0" and "zz_broken.png" in result.output
    # Same labels as the detailed CSV.
    detailed = tmp_path / "preds.csv"
    runner.invoke(app, ["predict", "--checkpoint", str(run_dir / "model.safetensors"), *inputs,
                        "--out", str(detailed), "--workers", "0", "--crops"])
    with open(detailed, newline="") as fh:
        full = {Path(r["filename"]).name: r["label"] for r in csv.DictReader(fh) if not r["error"]}
    assert all(dict(rows)[name] == label for name, label in full.items())


def _train_cli(tmp_path, *args):
    """A one-epoch tiny config in c.yaml, trained by the CLI into tmp_path/run with ``args``."""
    data = make_dataset(tmp_path / "d", videos_per_class=4, frames=2, splits=("train", "val"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data, tmp_path / "runs", epochs=1)))
    result = runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    return config, result, yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())


def test_train_strategy_flag_sets_the_config_key(tmp_path):
    config, result, saved = _train_cli(tmp_path, "--strategy", "feature_extractor")
    assert saved["strategy"]["name"] == "feature_extractor"
    assert "strategy feature_extractor:" in result.output and "trainable of" in result.output
    bad = runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "r2"),
                              "--strategy", "lora"])
    assert bad.exit_code != 0 and "strategy.name" in str(bad.exception) + bad.output


def test_train_command_with_overrides(tmp_path):
    config, _, saved = _train_cli(tmp_path, "train.optimizer.lr=0.001", "name=renamed")
    assert saved["train"]["optimizer"]["lr"] == 0.001 and saved["name"] == "renamed"
    # A second run into the same folder is refused rather than mixing two runs.
    again = runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "run")])
    assert again.exit_code != 0 and "not empty" in str(again.exception) + again.output


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: xception}\ntrain: {epoch: 3, optimizer: {lr: -1}}\n")
    with pytest.raises(Exception) as info:
        load_config(bad)
    text = str(info.value)
    assert "train.epoch" in text and "unknown key" in text
    assert "train.optimizer.lr" in text and "greater than 0" in text


def test_unknown_model_key_and_name_are_rejected(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: xcepton}\n")
    result = runner.invoke(app, ["config", "-c", str(config)])
    assert result.exit_code != 0
    assert "xception" in str(result.exception)  # suggests the close name
    config.write_text("model: {name: xception, hed: {type: mlp}}\n")
    result = runner.invoke(app, ["config", "-c", str(config)])
    assert "model.hed" in str(result.exception)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    result = runner.invoke(app, ["config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["model"]["name"] and resolved["train"]["epochs"] >= 1


def test_readme_config_reference_is_current():
    from deepfake_detect.models.reference import config_reference

    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", readme, re.S)
    assert block, "README lacks the config reference markers"
    assert block.group(1).strip() == config_reference(builtin_only=True).strip(), (
        "README config reference is stale: regenerate with `deepfake-detect config --reference`"
    )


def test_readme_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert "uv run deepfake-detect quickstart" in readme
    assert "uv run pytest" in readme
    assert "uv run pytest" in (REPO / ".ci" / "run").read_text()


def test_prepare_command_on_photos_and_bad_settings(tmp_path, shared):
    photos = tmp_path / "in" / "real"
    photos.mkdir(parents=True)
    for name in ("two_people.jpg", "paul_rudd.jpg"):
        (photos / name).write_bytes((shared / "media" / "faces" / name).read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    result = runner.invoke(app, [
        "prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--select", "all",
        "--size", "48", "--format", "jpg", "--device", "cpu", "--detect-size", "640",
    ], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "face crops written" in result.output and "failure: unreadable" in result.output
    crops = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg"))
    assert crops == ["real/paul_rudd/00000_0.jpg", "real/two_people/00000_0.jpg", "real/two_people/00000_1.jpg"]
    bad = runner.invoke(app, ["prepare", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--crop", "squash"])
    assert "prepare.crop.mode" in str(bad.exception) and "'box' or 'align'" in str(bad.exception)


def test_synthesize_command(tmp_path, shared):
    lm = shared / "media" / "landmarks"
    result = runner.invoke(app, [
        "synthesize", str(lm / "000_0000.png"), str(lm / "001_0000.png"), "--landmarks",
        str(lm / "precomputed_landmarks.json"), "--out", str(tmp_path / "sbi"),
    ])
    assert result.exit_code == 0, result.output
    assert "2 fakes written" in result.output
    assert len(list((tmp_path / "sbi" / "fake").rglob("*.png"))) == 2


def test_augment_preview_writes_a_seeded_png_grid(tmp_path):
    from PIL import Image

    data = make_dataset(tmp_path / "toy", videos_per_class=4, frames=2)
    cfg = tiny_config(data, tmp_path / "runs")
    cfg["data"]["augment"] = {"hflip": 0.5, "noise": 1.0, "downup": 0.5, "cutout": 1.0}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    pngs = []
    for name in ("a.png", "b.png"):
        result = runner.invoke(app, ["augment-preview", "-c", str(config), "--out", str(tmp_path / name),
                                     "--samples", "3", "--views", "2", "--seed", "1",
                                     "data.augment.color_shift=1"])
        assert result.exit_code == 0, result.output
        pngs.append(tmp_path / name)
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        # 3 columns (original + 2 views) by 3 rows of cells of at least the input size (32 px),
        # small sizes enlarged; never an unbounded image
        assert 3 * 32 < im.width <= 3 * 128 + 16 and 3 * 32 < im.height <= 16 + 3 * 128 + 16
        assert (im.width, im.height) == (3 * 96 + 4 * 4, 16 + 3 * 96 + 4 * 4)
        pixels = np.asarray(im)
    assert pngs[0].read_bytes() == pngs[1].read_bytes()  # same seed, same grid
    cell = pixels[16 + 4 : 16 + 4 + 96]  # first row
    original, view = cell[:, 4 : 4 + 96], cell[:, 4 + 100 : 4 + 100 + 96]
    assert (original != view).any()  # the views are augmented
    other = runner.invoke(app, ["augment-preview", "-c", str(config), "--out", str(tmp_path / "c.png"),
                                "--samples", "3", "--views", "2", "--seed", "2", "--data", str(data)])
    assert other.exit_code == 0, other.output
    assert (tmp_path / "c.png").read_bytes() != pngs[0].read_bytes()


def test_seed_flags_map_to_config_keys(tmp_path):
    from deepfake_detect.config.flags import flag_overrides

    base = tiny_config(tmp_path, tmp_path / "runs")
    cfg = load_config(base=base)
    got = flag_overrides(cfg, {"epochs": 30, "batch_size": 16, "use_mixup": True,
                               "use_amp": False, "use_tta": True, "loss": "focal",
                               "accumulation_steps": 4, "early_stopping": None})
    assert set(got) == {"train.epochs=30", "data.batch_size=16", "data.augment.mixup_alpha=0.2",
                        "data.augment.cutmix_alpha=1.0", "train.precision=32",
                        "eval.tta=default", "train.loss.name=focal",
                        "train.accumulate_grad_batches=4"}
    # a recipe's own strengths and views are kept; off switches clear them
    recipe = load_config(base=base, overrides=["data.augment.mixup_alpha=0.4", "eval.tta=hflip"])
    assert flag_overrides(recipe, {"use_mixup": True, "use_tta": True}) == []
    assert flag_overrides(recipe, {"use_mixup": False, "use_tta": False}) == [
        "data.augment.mixup_alpha=0", "data.augment.cutmix_alpha=0", "eval.tta=null"]


def test_train_accepts_seed_style_flags(tmp_path):
    # underscores as the seed wrote them; each flag lands in the saved config
    _, _, saved = _train_cli(tmp_path, "--use_mixup", "--batch_size", "4", "--lr", "0.002",
                             "--no_amp", "--label_smoothing", "0.1", "--early_stopping", "3")
    assert saved["data"]["batch_size"] == 4
    assert saved["data"]["augment"]["mixup_alpha"] == 0.2
    assert saved["data"]["augment"]["cutmix_alpha"] == 1.0
    assert saved["train"]["optimizer"]["lr"] == 0.002
    assert saved["train"]["precision"] == "32"
    assert saved["train"]["loss"]["label_smoothing"] == 0.1
    assert saved["train"]["early_stopping_patience"] == 3
