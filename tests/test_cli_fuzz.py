"""Fuzz-style table test of the command line (issue 14: "Bad input gets a clear message, never a
traceback").

Every case gives one command exactly ONE bad argument or bad file, beside otherwise valid
material (a tiny checkpoint, a tiny dataset, a valid config). Each must:

- exit with a non-zero code;
- print exactly one line starting with ``error:``, as the last line on stderr (so nothing of it
  was wrapped onto a second line), naming what is wrong (``expect``);
- never show a traceback, nor take the "unexpected ... this is a bug" path;
- leave the inputs byte-identical: every file under the inputs folder (data, checkpoints,
  configs) and under the folder of pre-existing user files is hashed before and after, and no
  entry may appear or vanish there.

The CLI runs in-process through ``deepfake_detect.cli.app.main`` (what the console script
calls); a few cases also run as ``python -m deepfake_detect`` to show that the real entry point
prints the same line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, make_dataset, tiny_config
from deepfake_detect.cli.app import main
from deepfake_detect.models.checkpoint import checkpoint_meta, export_safetensors
from deepfake_detect.models.registry import build_detector

torch.set_num_threads(1)

TINY = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}

# A YAML "billion laughs": nine levels of nine aliases, 9**9 strings once expanded.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


# --------------------------------------------------------------------------- material


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The valid material, made once: a dataset with splits and a tiny exported checkpoint in
    both formats (no training: the weights are random, which is all a failing command needs)."""
    root = tmp_path_factory.mktemp("fuzz-template")
    make_dataset(root / "data", videos_per_class=2, frames=2, splits=("train", "val", "test"))
    torch.manual_seed(0)
    det = build_detector(TINY).eval()
    meta = checkpoint_meta(det, threshold=0.5, experiment={"model": det.config.model_dump(mode="json")})
    export_safetensors(det, root / "model.safetensors", meta)
    torch.save({"state_dict": {f"model.{k}": v for k, v in det.state_dict().items()},
                "deepfake_detect": meta, "epoch": 1}, root / "best.ckpt")
    return root


def _write_inputs(root: Path, template: Path, shared: Path) -> None:
    """The inputs tree: the template plus every bad file a case may point at."""
    shutil.copytree(template, root)
    rng = np.random.default_rng(0)
    (root / "empty_ds" / "real").mkdir(parents=True)  # a dataset folder with no images
    (root / "empty_ds" / "fake").mkdir()
    (root / "empty_ds" / "real" / "README.txt").write_text("no images here\n")
    (root / "notes.txt").write_text("just some notes\n")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "random.ckpt").write_bytes(b"\x01" + rng.bytes(4095))
    shutil.copy(root / "data" / "test" / "real" / "test000_frame_0.png", root / "face.png")
    st = (root / "model.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(st[: len(st) // 2])
    ck = (root / "best.ckpt").read_bytes()
    (root / "cut.ckpt").write_bytes(ck[: len(ck) // 2])
    (root / "settings.yaml").write_text(yaml.safe_dump({"threshold": 0.4, "names": ["a", "b"]}))
    (root / "self.yaml").write_text(yaml.safe_dump(
        {"ensemble": {"members": [{"checkpoint": "self.yaml"}, {"checkpoint": "model.safetensors"}]}}))
    ensemble = {"missing": ["nope.safetensors", "model.safetensors"], "one": ["model.safetensors"],
                "cycle_a": ["ens_cycle_b.yaml", "model.safetensors"],
                "cycle_b": ["ens_cycle_a.yaml", "model.safetensors"]}
    for name, members in ensemble.items():
        (root / f"ens_{name}.yaml").write_text(yaml.safe_dump(
            {"ensemble": {"members": [{"checkpoint": m} for m in members]}}))
    # configs: one valid, the rest with one fault each
    config = tiny_config(root / "data", root.parent / "runs", epochs=1)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "model.yaml").write_text(yaml.safe_dump({"model": TINY}))
    (root / "garbage.yaml").write_bytes(b"\x00\xff\xfe" + rng.bytes(500))
    (root / "bomb.yaml").write_text(ALIAS_BOMB)
    (root / "list.yaml").write_text("- model\n- data\n")
    (root / "tabs.yaml").write_text("model:\n\tname: timm\n")
    (root / "deep.yaml").write_text("model: " + "[" * 20000 + "]" * 20000 + "\n")
    (root / "utf16.yaml").write_bytes("model: {name: timm}\n".encode("utf-16"))
    # CSV manifests: a video column that climbs out, and one without the needed columns
    (root / "escape.csv").write_text(
        "path,label,video\n"
        + "".join(f"data/test/{c}/test00{v}_frame_{f}.png,{c},../../escape\n"
                  for c in ("real", "fake") for v in range(2) for f in range(2)))
    (root / "escape_videos.csv").write_text("path,label,video\nclip.mp4,real,../../escape\n")
    (root / "nocols.csv").write_text("file,kind\ndata/test/real/test000_frame_0.png,real\n")
    (root / "landmarks.json").write_bytes(b"{not json" + rng.bytes(64))
    # a short real video for prepare
    shutil.copy(shared / "media" / "videos" / "hamilton_360p.mp4", root / "clip.mp4")


def _write_existing(root: Path) -> None:
    """Files and folders a user already has where a case puts an output."""
    root.mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.txt").write_text("my thesis, not yours\n")
    (root / "user.csv").write_text("name,grade\nalice,5\n")
    (root / "user.png").write_bytes((root.parent / "in" / "face.png").read_bytes())
    (root / "user.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "file.txt").write_text("a plain file where a folder is expected\n")
    # /dev/full as an output, without risking the real one (as root, replacing an output file
    # would replace the device): a private device node (root), else a link to it
    try:
        os.mknod(root / "full.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (OSError, AttributeError):
        if os.path.exists("/dev/full"):
            os.symlink("/dev/full", root / "full.csv")


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content hash, links by target, devices by number."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = f"special:{stat.S_IFMT(st.st_mode)}:{st.st_rdev}"
    return out


class Env:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.inputs = tmp / "in"
        self.have = tmp / "have"
        self.out = tmp / "out"
        self.cwd = tmp / "cwd"

    def argv(self, args: list[str]) -> list[str]:
        subst = {"{in}": str(self.inputs), "{have}": str(self.have), "{out}": str(self.out)}
        result = []
        for a in args:
            for key, value in subst.items():
                a = a.replace(key, value)
            result.append(a)
        return result

    def snapshots(self) -> dict[str, dict[str, str]]:
        return {"inputs": snapshot(self.inputs), "existing files": snapshot(self.have)}


@pytest.fixture
def env(tmp_path, template, shared, monkeypatch) -> Env:
    e = Env(tmp_path)
    _write_inputs(e.inputs, template, shared)
    _write_existing(e.have)
    e.cwd.mkdir()
    monkeypatch.chdir(e.cwd)  # outputs with a default name land here, never in the repository
    monkeypatch.setattr(sys, "argv", ["deepfake-detect"])
    monkeypatch.setenv("COLUMNS", "60")  # narrow: a wrapped error line would show
    monkeypatch.delenv("DEEPFAKE_DETECT_DEBUG", raising=False)
    return e


# --------------------------------------------------------------------------- the table

EVAL = ["evaluate", "--checkpoint", "{in}/model.safetensors", "--data", "{in}/data",
        "--out", "{out}/eval", "--workers", "0", "--device", "cpu", "--no-plots"]
PRED = ["predict", "--checkpoint", "{in}/model.safetensors", "{in}/data/test",
        "--out", "{out}/preds.csv", "--workers", "0", "--device", "cpu"]
CAL = ["calibrate", "--checkpoint", "{in}/model.safetensors", "--data", "{in}/data",
       "--out", "{out}/cal.safetensors", "--workers", "0", "--device", "cpu"]
PREP = ["prepare", "{in}/clip.mp4", "--label", "real", "--out", "{out}/faces", "--device", "cpu",
        "--frames", "1", "--detect-size", "320"]
SYN = ["synthesize", "{in}/data/train/real", "--out", "{out}/sbi"]
PREVIEW = ["augment-preview", "-c", "{in}/config.yaml", "--out", "{out}/preview.png",
           "--samples", "1", "--views", "1"]
TRAIN = ["train", "-c", "{in}/config.yaml", "--out", "{out}/run"]
SHARD = ["shard", "{in}/data", "--out", "{out}/shards"]
EXPORT = ["export", "--checkpoint", "{in}/best.ckpt", "--out", "{out}/m.safetensors"]


def _replace(base: list[str], option: str, value: str) -> list[str]:
    """``base`` with the value of ``option`` replaced (the option must be in ``base``)."""
    args = list(base)
    args[args.index(option) + 1] = value
    return args


def _swap(base: list[str], old: str, new: str) -> list[str]:
    """``base`` with the argument ``old`` replaced by ``new``."""
    return [new if a == old else a for a in base]


def case(id: str, args: list[str], expect: str, *, xfail: str | None = None):
    """One row: ``args`` (with {in}, {have}, {out} placeholders) and a text the error line must
    hold (case-insensitive), naming what is wrong."""
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(args, expect, id=id, marks=marks)


CASES = [
    # ---- top level
    case("no-such-command", ["bogus"], "bogus"),
    case("unknown-option", ["evaluate", "--frobnicate"], "--frobnicate"),
    case("models-extra-argument", ["models", "extra"], "extra"),
    # ---- config
    case("config-missing-file", ["config", "-c", "{in}/nope.yaml"], "nope.yaml"),
    case("config-is-folder", ["config", "-c", "{in}/data"], "data"),
    case("config-binary-garbage", ["config", "-c", "{in}/garbage.yaml"], "garbage.yaml"),
    case("config-alias-bomb", ["config", "-c", "{in}/bomb.yaml"], "bomb.yaml"),
    case("config-not-a-mapping", ["config", "-c", "{in}/list.yaml"], "list.yaml"),
    case("config-tabs", ["config", "-c", "{in}/tabs.yaml"], "tabs.yaml"),
    case("config-deep-nesting", ["config", "-c", "{in}/deep.yaml"], "deep.yaml"),
    case("config-utf16", ["config", "-c", "{in}/utf16.yaml"], "utf16.yaml"),
    case("config-lr-inf", ["config", "-c", "{in}/config.yaml", "train.optimizer.lr=.inf"], "train.optimizer.lr"),
    case("config-lr-nan", ["config", "-c", "{in}/config.yaml", "train.optimizer.lr=.nan"], "train.optimizer.lr"),
    case("config-lr-1e400", ["config", "-c", "{in}/config.yaml", "train.optimizer.lr=1e400"], "train.optimizer.lr"),
    case("config-override-no-equals", ["config", "-c", "{in}/config.yaml", "train.epochs"], "train.epochs"),
    case("config-override-unknown-key", ["config", "-c", "{in}/config.yaml", "train.epoch=3"], "train.epoch"),
    case("config-override-bad-yaml", ["config", "-c", "{in}/config.yaml", "train.epochs=[1"], "train.epochs"),
    case("config-override-through-scalar", ["config", "-c", "{in}/config.yaml", "name.x=1"], "name"),
    case("config-nothing-given", ["config"], "--config"),
    # ---- train
    case("train-config-missing", _replace(TRAIN, "-c", "{in}/nope.yaml"), "nope.yaml"),
    case("train-config-garbage", _replace(TRAIN, "-c", "{in}/garbage.yaml"), "garbage.yaml"),
    case("train-config-bomb", _replace(TRAIN, "-c", "{in}/bomb.yaml"), "bomb.yaml"),
    case("train-lr-inf", [*TRAIN, "train.optimizer.lr=.inf"], "train.optimizer.lr"),
    case("train-flag-lr-negative", [*TRAIN, "--lr", "-1"], "lr"),
    case("train-flag-lr-abc", [*TRAIN, "--lr", "abc"], "--lr"),
    case("train-batch-size-0", [*TRAIN, "--batch-size", "0"], "batch_size"),
    case("train-batch-size-huge", [*TRAIN, "--batch-size", "99999999999999999999999"], "batch_size"),
    case("train-batch-size-abc", [*TRAIN, "--batch-size", "abc"], "--batch-size"),
    case("train-epochs-0", [*TRAIN, "--epochs", "0"], "epochs"),
    case("train-workers-negative", [*TRAIN, "data.num_workers=-2"], "num_workers"),
    case("train-seed-negative", [*TRAIN, "seed=-1"], "seed"),
    case("train-strategy-bogus", [*TRAIN, "--strategy", "bogus"], "strategy"),
    case("train-data-missing", [*TRAIN, "--data", "{in}/nope"], "nope"),
    case("train-data-empty-folder", [*TRAIN, "--data", "{in}/empty_ds"], "empty_ds"),
    case("train-data-is-txt", [*TRAIN, "--data", "{in}/notes.txt"], "notes.txt"),
    case("train-data-csv-no-columns", [*TRAIN, "--data", "{in}/nocols.csv"], "nocols.csv"),
    case("train-out-is-file", _replace(TRAIN, "--out", "{have}/file.txt"), "file.txt"),
    case("train-out-under-file", _replace(TRAIN, "--out", "{have}/file.txt/run"), "file.txt"),
    case("train-out-is-data", _replace(TRAIN, "--out", "{in}/data"), "data"),
    case("train-out-is-inputs-root", _replace(TRAIN, "--out", "{in}"), "in"),
    case("train-out-foreign-folder", _replace(TRAIN, "--out", "{have}/foreign"), "foreign"),
    case("train-resume-nothing", ["train", "--out", "{out}/never", "--resume"], "never"),
    case("train-no-config", ["train", "--out", "{out}/run"], "--config"),
    # ---- evaluate
    case("evaluate-checkpoint-missing", _replace(EVAL, "--checkpoint", "{in}/nope.safetensors"), "nope.safetensors"),
    case("evaluate-checkpoint-folder", _replace(EVAL, "--checkpoint", "{in}/data"), "data"),
    case("evaluate-checkpoint-random-bytes", _replace(EVAL, "--checkpoint", "{in}/random.ckpt"), "random.ckpt"),
    case("evaluate-checkpoint-png", _replace(EVAL, "--checkpoint", "{in}/face.png"), "face.png"),
    case("evaluate-checkpoint-yaml", _replace(EVAL, "--checkpoint", "{in}/settings.yaml"), "settings.yaml"),
    case("evaluate-checkpoint-txt", _replace(EVAL, "--checkpoint", "{in}/notes.txt"), "notes.txt"),
    case("evaluate-checkpoint-empty", _replace(EVAL, "--checkpoint", "{in}/empty.ckpt"), "empty.ckpt"),
    case("evaluate-checkpoint-truncated-safetensors", _replace(EVAL, "--checkpoint", "{in}/cut.safetensors"),
         "cut.safetensors"),
    case("evaluate-checkpoint-truncated-ckpt", _replace(EVAL, "--checkpoint", "{in}/cut.ckpt"), "cut.ckpt"),
    case("evaluate-ensemble-names-itself", _replace(EVAL, "--checkpoint", "{in}/self.yaml"), "self.yaml"),
    case("evaluate-ensemble-cycle", _replace(EVAL, "--checkpoint", "{in}/ens_cycle_a.yaml"), "ens_cycle"),
    case("evaluate-ensemble-member-missing", _replace(EVAL, "--checkpoint", "{in}/ens_missing.yaml"),
         "nope.safetensors"),
    case("evaluate-ensemble-one-member", _replace(EVAL, "--checkpoint", "{in}/ens_one.yaml"), "ens_one.yaml"),
    case("evaluate-config-garbage", [*EVAL, "-c", "{in}/garbage.yaml"], "garbage.yaml"),
    case("evaluate-data-missing", _replace(EVAL, "--data", "{in}/nope"), "nope"),
    case("evaluate-data-is-txt", _replace(EVAL, "--data", "{in}/notes.txt"), "notes.txt"),
    case("evaluate-data-empty-folder", _replace(EVAL, "--data", "{in}/empty_ds"), "empty_ds"),
    case("evaluate-data-csv-no-columns", _replace(EVAL, "--data", "{in}/nocols.csv"), "nocols.csv"),
    case("evaluate-split-bogus", [*EVAL, "--split", "bogus"], "--split"),
    case("evaluate-threshold-2", [*EVAL, "--threshold", "2"], "--threshold"),
    case("evaluate-threshold-nan", [*EVAL, "--threshold", "nan"], "--threshold"),
    case("evaluate-threshold-negative", [*EVAL, "--threshold", "-1"], "--threshold"),
    case("evaluate-threshold-1e400", [*EVAL, "--threshold", "1e400"], "--threshold"),
    case("evaluate-threshold-abc", [*EVAL, "--threshold", "abc"], "--threshold"),
    case("evaluate-batch-size-0", [*EVAL, "--batch-size", "0"], "--batch-size"),
    case("evaluate-batch-size-negative", [*EVAL, "--batch-size", "-3"], "--batch-size"),
    case("evaluate-batch-size-abc", [*EVAL, "--batch-size", "abc"], "--batch-size"),
    case("evaluate-workers-negative", _replace(EVAL, "--workers", "-2"), "--workers"),
    case("evaluate-aggregation-bogus", [*EVAL, "--video-aggregation", "bogus"], "aggregation"),
    case("evaluate-tta-bogus", [*EVAL, "--tta", "bogus"], "bogus"),
    case("evaluate-mc-dropout-1", [*EVAL, "--mc-dropout", "1"], "--mc-dropout"),
    case("evaluate-device-bogus", _replace(EVAL, "--device", "bogus"), "--device"),
    case("evaluate-device-cuda-99", _replace(EVAL, "--device", "cuda:99"), "--device"),
    case("evaluate-ensemble-method-bogus", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--ensemble", "bogus"], "bogus"),
    case("evaluate-weights-count", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "1,2,3"], "--weights"),
    case("evaluate-weights-abc", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "a,b"], "--weights"),
    case("evaluate-weights-negative", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "-1,2"], "weight"),
    case("evaluate-weights-nan", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "nan,1"], "weight"),
    case("evaluate-weights-inf", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "inf,1"], "weight"),
    case("evaluate-weights-all-zero", [*EVAL, "--checkpoint", "{in}/best.ckpt", "--weights", "0,0"], "weight"),
    case("evaluate-weights-one-checkpoint", [*EVAL, "--weights", "1"], "--weights"),
    case("evaluate-out-is-file", _replace(EVAL, "--out", "{have}/file.txt"), "file.txt"),
    case("evaluate-out-under-file", _replace(EVAL, "--out", "{have}/file.txt/sub"), "file.txt"),
    case("evaluate-out-is-data", _replace(EVAL, "--out", "{in}/data"), "data"),
    case("evaluate-out-foreign-folder", _replace(EVAL, "--out", "{have}/foreign"), "foreign"),
    # ---- predict
    case("predict-no-inputs", [a for a in PRED if a != "{in}/data/test"], "give files"),
    case("predict-checkpoint-missing", _replace(PRED, "--checkpoint", "{in}/nope.ckpt"), "nope.ckpt"),
    case("predict-checkpoint-random-bytes", _replace(PRED, "--checkpoint", "{in}/random.ckpt"), "random.ckpt"),
    case("predict-checkpoint-truncated", _replace(PRED, "--checkpoint", "{in}/cut.safetensors"), "cut.safetensors"),
    case("predict-ensemble-names-itself", _replace(PRED, "--checkpoint", "{in}/self.yaml"), "self.yaml"),
    case("predict-threshold-2", [*PRED, "--threshold", "2"], "--threshold"),
    case("predict-threshold-nan", [*PRED, "--threshold", "nan"], "--threshold"),
    case("predict-threshold-inf", [*PRED, "--threshold", "inf"], "--threshold"),
    case("predict-format-bogus", [*PRED, "--format", "bogus"], "--format"),
    case("predict-aggregation-bogus", [*PRED, "--aggregation", "bogus"], "aggregation"),
    case("predict-tta-bogus", [*PRED, "--tta", "bogus"], "bogus"),
    case("predict-tta-scale-0", [*PRED, "--tta", "scale:0"], "scale"),
    case("predict-tta-scale-abc", [*PRED, "--tta", "scale:abc"], "scale"),
    case("predict-tta-scale-nan", [*PRED, "--tta", "scale:nan"], "scale"),
    case("predict-tta-five-crop-2", [*PRED, "--tta", "five_crop:2"], "five_crop"),
    case("predict-tta-empty", [*PRED, "--tta", ","], "--tta"),
    case("predict-mc-dropout-no-dropout", [*PRED, "--mc-dropout", "4"], "dropout"),
    case("predict-batch-size-huge", [*PRED, "--batch-size", "99999999999999999999999"], "--batch-size"),
    case("predict-mc-dropout-1", [*PRED, "--mc-dropout", "1"], "--mc-dropout"),
    case("predict-batch-size-0", [*PRED, "--batch-size", "0"], "--batch-size"),
    case("predict-batch-size-negative", [*PRED, "--batch-size", "-3"], "--batch-size"),
    case("predict-workers-negative", _replace(PRED, "--workers", "-2"), "--workers"),
    case("predict-device-bogus", _replace(PRED, "--device", "bogus"), "--device"),
    case("predict-device-cuda-99", _replace(PRED, "--device", "cuda:99"), "--device"),
    case("predict-fail-label-negative", [*PRED, "--format", "submission", "--fail-label", "-1"], "--fail-label"),
    case("predict-fail-label-2", [*PRED, "--fail-label", "2"], "--fail-label"),
    case("predict-out-is-input-image", _replace(PRED, "--out", "{in}/face.png") + ["{in}/face.png"], "face.png"),
    case("predict-out-is-checkpoint", _replace(PRED, "--out", "{in}/model.safetensors"), "model.safetensors"),
    case("predict-out-is-folder", _replace(PRED, "--out", "{have}/foreign"), "foreign"),
    case("predict-out-under-file", _replace(PRED, "--out", "{have}/file.txt/sub/out.csv"), "file.txt"),
    case("predict-out-user-csv", _replace(PRED, "--out", "{have}/user.csv"), "user.csv"),
    case("predict-out-full-device", _replace(PRED, "--out", "{have}/full.csv"), "full.csv"),
    case("predict-json-is-config", [*PRED, "--json", "{in}/settings.yaml"], "settings.yaml"),
    case("predict-per-frame-over-data-manifest", [*PRED, "--per-frame", "{in}/escape.csv"], "escape.csv"),
    case("predict-json-over-user-json", [*PRED, "--json", "{in}/landmarks.json"], "landmarks.json"),
    case("predict-video-dir-with-image-model", [*PRED, "--video-dir", "{in}/data/test/real"], "--video-dir"),
    # ---- export
    case("export-checkpoint-missing", _replace(EXPORT, "--checkpoint", "{in}/nope.ckpt"), "nope.ckpt"),
    case("export-checkpoint-png", _replace(EXPORT, "--checkpoint", "{in}/face.png"), "face.png"),
    case("export-checkpoint-empty", _replace(EXPORT, "--checkpoint", "{in}/empty.ckpt"), "empty.ckpt"),
    case("export-checkpoint-truncated-ckpt", _replace(EXPORT, "--checkpoint", "{in}/cut.ckpt"), "cut.ckpt"),
    case("export-config-bomb", [*EXPORT, "-c", "{in}/bomb.yaml"], "bomb.yaml"),
    case("export-config-not-mapping", [*EXPORT, "-c", "{in}/list.yaml"], "list.yaml"),
    case("export-out-over-user-csv", _replace(EXPORT, "--out", "{have}/user.csv"), "user.csv"),
    case("export-out-over-user-safetensors", _replace(EXPORT, "--out", "{have}/user.safetensors"),
         "user.safetensors"),
    case("export-out-is-checkpoint", _replace(EXPORT, "--out", "{in}/best.ckpt"), "best.ckpt"),
    case("export-out-is-checkpoint-forced", [*_replace(EXPORT, "--out", "{in}/best.ckpt"), "--force"],
         "best.ckpt"),
    case("export-out-is-folder", _replace(EXPORT, "--out", "{have}/foreign"), "foreign"),
    case("export-out-under-file", _replace(EXPORT, "--out", "{have}/file.txt/m.safetensors"), "file.txt"),
    case("export-out-full-device", [*_replace(EXPORT, "--out", "{have}/full.csv"), "--force"], "full.csv"),
    case("export-threshold-2", [*EXPORT, "--threshold", "2"], "--threshold"),
    case("export-threshold-nan", [*EXPORT, "--threshold", "nan"], "--threshold"),
    # ---- calibrate
    case("calibrate-split-test", [*CAL, "--split", "test"], "test"),
    case("calibrate-split-bogus", [*CAL, "--split", "bogus"], "bogus"),
    case("calibrate-strategy-bogus", [*CAL, "--threshold-strategy", "bogus"], "bogus"),
    case("calibrate-target-fpr-2", [*CAL, "--threshold-strategy", "fpr", "--target-fpr", "2"], "fpr"),
    case("calibrate-target-fpr-nan", [*CAL, "--threshold-strategy", "fpr", "--target-fpr", "nan"], "fpr"),
    case("calibrate-device-bogus", _replace(CAL, "--device", "bogus"), "--device"),
    case("calibrate-ensemble-workers-negative",
         [*_replace(_replace(CAL, "--workers", "-2"), "--out", "{out}/ens.yaml"), "--checkpoint", "{in}/best.ckpt"],
         "--workers"),
    case("calibrate-batch-size-0", [*CAL, "--batch-size", "0"], "--batch-size"),
    case("calibrate-workers-negative", _replace(CAL, "--workers", "-2"), "--workers"),
    case("calibrate-ensemble-one-checkpoint", [*CAL, "--ensemble", "soft"], "--ensemble"),
    case("calibrate-checkpoint-random", _replace(CAL, "--checkpoint", "{in}/random.ckpt"), "random.ckpt"),
    case("calibrate-data-empty-folder", _replace(CAL, "--data", "{in}/empty_ds"), "empty_ds"),
    case("calibrate-out-is-checkpoint", _replace(CAL, "--out", "{in}/model.safetensors"), "model.safetensors"),
    case("calibrate-out-is-folder", _replace(CAL, "--out", "{have}/foreign"), "foreign"),
    case("calibrate-out-under-file", _replace(CAL, "--out", "{have}/file.txt/cal.safetensors"), "file.txt"),
    case("calibrate-out-user-safetensors", _replace(CAL, "--out", "{have}/user.safetensors"), "user.safetensors"),
    # ---- prepare
    case("prepare-input-missing", _swap(PREP, "{in}/clip.mp4", "{in}/nope.mp4"), "nope.mp4"),
    case("prepare-frames-0", _replace(PREP, "--frames", "0"), "frames"),
    case("prepare-sampling-bogus", [*PREP, "--sampling", "bogus"], "sampling"),
    case("prepare-every-0", [*PREP, "--sampling", "every", "--every", "0"], "every"),
    case("prepare-size-0", [*PREP, "--size", "0"], "size"),
    case("prepare-quality-200", [*PREP, "--quality", "200"], "quality"),
    case("prepare-format-bogus", [*PREP, "--format", "bogus"], "format"),
    case("prepare-margin-negative", [*PREP, "--margin", "-1"], "margin"),
    case("prepare-detector-bogus", [*PREP, "--detector", "bogus"], "bogus"),
    case("prepare-device-bogus", _replace(PREP, "--device", "bogus"), "bogus"),
    case("prepare-min-score-2", [*PREP, "--min-score", "2"], "min_score"),
    case("prepare-label-bogus", _replace(PREP, "--label", "bogus"), "--label"),
    case("prepare-workers-0", [*PREP, "--workers", "0"], "--workers"),
    case("prepare-config-garbage", [*PREP, "-c", "{in}/garbage.yaml"], "garbage.yaml"),
    case("prepare-config-bomb", [*PREP, "-c", "{in}/bomb.yaml"], "bomb.yaml"),
    case("prepare-out-is-input-folder", ["prepare", "{in}/data", "--out", "{in}/data"], "data"),
    case("prepare-out-is-file", _replace(PREP, "--out", "{have}/file.txt"), "file.txt"),
    case("prepare-out-foreign-folder", _replace(PREP, "--out", "{have}/foreign"), "foreign"),
    case("prepare-csv-escape", ["prepare", "{in}/escape.csv", "--out", "{out}/faces"], "escape"),
    case("prepare-shards-inside-out", [*PREP, "--shards", "{out}/faces/shards"], "shards"),
    case("prepare-split-option-without-shards", [*PREP, "--val-fraction", "0.2"], "--shards"),
    # ---- shard, shard-merge, shard datasets by URI
    case("shard-input-missing", _swap(SHARD, "{in}/data", "{in}/nope"), "nope"),
    case("shard-out-is-input-folder", _replace(SHARD, "--out", "{in}/data"), "data"),
    case("shard-out-foreign-folder", _replace(SHARD, "--out", "{have}/foreign"), "foreign"),
    case("shard-val-fraction-2", [*SHARD, "--val-fraction", "2"], "--val-fraction"),
    case("shard-node-rank-out-of-range", [*SHARD, "--node-rank", "2", "--num-nodes", "2"], "node"),
    case("shard-node-rank-alone", [*SHARD, "--node-rank", "0"], "--num-nodes"),
    case("shard-merge-foreign-folder", ["shard-merge", "{have}/foreign"], "foreign"),
    case("shard-merge-missing-folder", ["shard-merge", "{in}/nope"], "nope"),
    case("evaluate-data-http-uri", _replace(EVAL, "--data", "http://example.org/shards"),
         "http://example.org/shards"),
    case("train-data-path-http-uri", [*TRAIN, "data.path=http://example.org/shards"],
         "http://example.org/shards"),
    # refused before anything is fetched: calibrate reads local shard folders only
    case("calibrate-data-s3-uri", _replace(CAL, "--data", "s3://bucket/shards"), "local folders"),
    # ---- synthesize
    case("synthesize-input-missing", _swap(SYN, "{in}/data/train/real", "{in}/nope"), "nope"),
    case("synthesize-input-txt", _swap(SYN, "{in}/data/train/real", "{in}/notes.txt"), "notes.txt"),
    case("synthesize-per-image-0", [*SYN, "--per-image", "0"], "per"),
    # too many (the 10**23 a typo might give ran out of memory; a modest excess keeps a
    # regression harmless here)
    case("synthesize-per-image-too-many", [*SYN, "--per-image", "1001"], "per_image"),
    case("synthesize-per-image-abc", [*SYN, "--per-image", "abc"], "--per-image"),
    case("synthesize-seed-negative", [*SYN, "--seed", "-1"], "seed"),
    case("synthesize-workers-0", [*SYN, "--workers", "0"], "--workers"),
    case("synthesize-landmarks-missing", [*SYN, "--landmarks", "{in}/nope.json"], "nope.json"),
    case("synthesize-landmarks-garbage", [*SYN, "--landmarks", "{in}/landmarks.json"], "landmarks.json"),
    case("synthesize-out-is-input", _replace(SYN, "--out", "{in}/data/train/real"), "real"),
    case("synthesize-out-is-file", _replace(SYN, "--out", "{have}/file.txt"), "file.txt"),
    case("synthesize-out-foreign-folder", _replace(SYN, "--out", "{have}/foreign"), "foreign"),
    # ---- augment-preview
    case("preview-config-missing", _replace(PREVIEW, "-c", "{in}/nope.yaml"), "nope.yaml"),
    case("preview-config-garbage", _replace(PREVIEW, "-c", "{in}/garbage.yaml"), "garbage.yaml"),
    case("preview-config-bomb", _replace(PREVIEW, "-c", "{in}/bomb.yaml"), "bomb.yaml"),
    case("preview-lr-inf", [*PREVIEW, "train.optimizer.lr=.inf"], "train.optimizer.lr"),
    case("preview-samples-0", _replace(PREVIEW, "--samples", "0"), "--samples"),
    case("preview-views-0", _replace(PREVIEW, "--views", "0"), "--views"),
    case("preview-views-too-many", _replace(PREVIEW, "--views", "100"), "--views"),
    case("preview-samples-too-many", _replace(PREVIEW, "--samples", "1000"), "--samples"),
    case("preview-data-empty-folder", [*PREVIEW, "--data", "{in}/empty_ds"], "empty_ds"),
    case("preview-data-is-txt", [*PREVIEW, "--data", "{in}/notes.txt"], "notes.txt"),
    case("preview-out-is-config", _replace(PREVIEW, "--out", "{in}/config.yaml"), "config.yaml"),
    case("preview-out-is-data-image",
         [*_replace(PREVIEW, "--out", "{in}/data/train/real/train000_frame_0.png"), "--force"],
         "train000_frame_0.png"),
    case("preview-out-is-folder", _replace(PREVIEW, "--out", "{have}/foreign"), "foreign"),
    case("preview-out-user-png", _replace(PREVIEW, "--out", "{have}/user.png"), "user.png"),
    case("preview-out-under-file", _replace(PREVIEW, "--out", "{have}/file.txt/p.png"), "file.txt"),
    case("preview-out-full-device", [*_replace(PREVIEW, "--out", "{have}/full.csv"), "--force"], "full.csv"),
    # ---- quickstart
    case("quickstart-out-is-file", ["quickstart", "--out", "{have}/file.txt"], "file.txt"),
    case("quickstart-out-foreign-folder", ["quickstart", "--out", "{have}/foreign"], "foreign"),
    case("quickstart-seed-abc", ["quickstart", "--seed", "abc"], "--seed"),
    case("quickstart-seed-negative", ["quickstart", "--out", "{out}/qs", "--seed", "-1"], "seed"),
]


BASELINES = {"evaluate": EVAL, "predict": PRED, "calibrate": CAL, "prepare": PREP,
             "synthesize": SYN, "augment-preview": PREVIEW, "train": TRAIN,
             "export": EXPORT, "shard": SHARD,
             "config": ["config", "-c", "{in}/config.yaml"]}


# --------------------------------------------------------------------------- the checks


def run_in_process(argv: list[str], capsys) -> tuple[int | str | None, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def check_failure(code, out: str, err: str, expect: str) -> str:
    """The invariants of a refused command; returns the error line."""
    shown = f"exit {code!r}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert code not in (0, None), f"the command succeeded:\n{shown}"
    assert "Traceback" not in out + err, shown
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"want exactly one error line:\n{shown}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == errors[0], f"the error line must be the last on stderr, whole:\n{shown}"
    line = errors[0]
    assert not line.startswith("error: unexpected ") and "bug of deepfake-detect" not in line, (
        f"an internal error, not a message for the user:\n{shown}")
    assert expect.lower() in line.lower(), f"the error should name {expect!r}:\n{shown}"
    return line


def _missing_device(env: Env, argv: list[str]) -> None:
    if any("full.csv" in a for a in argv) and not (env.have / "full.csv").exists():
        pytest.skip("no /dev/full here")


@pytest.mark.parametrize("command", BASELINES)
def test_baselines_succeed(env: Env, capsys, command):
    """Each case changes one thing in one of these command lines, which work as they are."""
    argv = env.argv(BASELINES[command])
    before = env.snapshots()
    code, out, err = run_in_process(argv, capsys)
    assert code in (0, None), f"exit {code}\n{out}\n{err}"
    assert env.snapshots() == before


@pytest.mark.parametrize(("args", "expect"), CASES)
def test_bad_input_gives_one_error_line(env: Env, capsys, args, expect):
    argv = env.argv(args)
    _missing_device(env, argv)
    before = env.snapshots()
    code, out, err = run_in_process(argv, capsys)
    if os.environ.get("FUZZ_SHOW"):
        shown = [line for line in (out + err).splitlines() if line.startswith("error:")] or [err[-800:]]
        sys.__stderr__.write(f"\n### exit={code} " + "\n".join(shown) + "\n")
    check_failure(code, out, err, expect)
    after = env.snapshots()
    for what in before:
        appeared = sorted(set(after[what]) - set(before[what]))
        vanished = sorted(set(before[what]) - set(after[what]))
        changed = sorted(k for k in before[what] if k in after[what] and before[what][k] != after[what][k])
        assert not (appeared or vanished or changed), (
            f"{what} touched: new {appeared}, gone {vanished}, changed {changed}")


# The real entry point (python -m deepfake_detect, as the console script) prints the same line.
SUBPROCESS_CASES = [
    pytest.param(["config", "-c", "{in}/bomb.yaml"], "bomb.yaml", id="config-alias-bomb"),
    pytest.param([*PRED, "--threshold", "nan"], "--threshold", id="predict-threshold-nan"),
    pytest.param(_replace(EVAL, "--checkpoint", "{in}/random.ckpt"), "random.ckpt",
                 id="evaluate-checkpoint-random-bytes"),
]


def _run_module(env: Env, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python -m deepfake_detect ARGV`` (what the console script runs), on a narrow terminal."""
    return subprocess.run(
        [sys.executable, "-m", "deepfake_detect", *argv], cwd=env.cwd, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "DEEPFAKE_DETECT_DEBUG"},
             "COLUMNS": "40", "PYTHONPATH": str(REPO / "src")},
        **kwargs,
    )


@pytest.mark.parametrize(("args", "expect"), SUBPROCESS_CASES)
def test_real_entry_point_prints_the_same_line(env: Env, capsys, args, expect):
    argv = env.argv(args)
    before = env.snapshots()
    proc = _run_module(env, argv, capture_output=True)
    line = check_failure(proc.returncode, proc.stdout, proc.stderr, expect)
    assert env.snapshots() == before
    code, out, err = run_in_process(argv, capsys)
    assert check_failure(code, out, err, expect) == line
    assert code == proc.returncode


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_stdout_that_cannot_be_written_gives_one_error_line(env: Env):
    """predict without --out writes its CSV to stdout; a full disk there is one error line."""
    argv = env.argv([a for a in PRED if a not in ("--out", "{out}/preds.csv")])
    before = env.snapshots()
    with open("/dev/full", "w") as full:
        proc = _run_module(env, argv, stdout=full, stderr=subprocess.PIPE)
    check_failure(proc.returncode, "", proc.stderr, "No space left on device")
    assert env.snapshots() == before


# Names that come from the data (a manifest's video column) may climb with '..': a command may
# accept them, but everything it writes stays inside --out.
ESCAPE_CASES = [
    # with plots: the error analysis names files after the worst videos
    pytest.param([*[a for a in EVAL if a != "--no-plots"], "--split", "all"], "{in}/data",
                 "{in}/escape.csv", id="evaluate"),
    pytest.param(PREP, "{in}/clip.mp4",
                 "{in}/escape_videos.csv", id="prepare"),
]


@pytest.mark.parametrize(("args", "data", "manifest"), ESCAPE_CASES)
def test_names_from_data_stay_inside_out(env: Env, capsys, args, data, manifest):
    argv = env.argv(_swap(args, data, manifest))
    before = snapshot(env.tmp)
    code, out, err = run_in_process(argv, capsys)
    if code not in (0, None):
        check_failure(code, out, err, "")
    after = snapshot(env.tmp)
    outside = {k: v for k, v in after.items() if not k.startswith("out/") and k != "out"}
    assert outside == before, f"written outside --out: {sorted(set(outside) ^ set(before))}"
    assert not any("escape" in p.name for p in env.tmp.parent.iterdir())
