"""Bad files given as a checkpoint: one clear line naming the file and saying what it is,
never a traceback, never advice to unpickle with ``weights_only=False``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from PIL import Image

from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.inference.ensemble import load_model
from deepfake_detect.models.checkpoint import checkpoint_meta, export_safetensors, load_detector
from deepfake_detect.models.registry import build_detector
from deepfake_detect.models.weights import read_state_dict, sniff_weights_file

torch.set_num_threads(1)

TINY = {"name": "timm", "timm_name": "test_resnet", "input_size": 32}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_detector():
    torch.manual_seed(0)
    return build_detector(TINY).eval()


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """A real small checkpoint of this tool in both formats: a training-style .ckpt (detector
    under ``model.``, meta beside it) and an exported .safetensors."""
    tmp = tmp_path_factory.mktemp("real")
    det = _tiny_detector()
    meta = checkpoint_meta(det)
    ckpt = tmp / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in det.state_dict().items()},
                "deepfake_detect": meta, "epoch": 1}, ckpt)
    st = export_safetensors(det, tmp / "model.safetensors", meta)
    return {"ckpt": ckpt, "safetensors": st}


def _cut(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _random(tmp: Path, real) -> Path:
    data = np.random.default_rng(0).bytes(4096)
    assert data[:1] != b"\x80" and not data.startswith(b"PK")  # no format's first bytes
    (tmp / "random.ckpt").write_bytes(data)
    return tmp / "random.ckpt"


def _png(tmp: Path, real) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "face.png")
    path = tmp / "face_as_weights.pth"
    path.write_bytes((tmp / "face.png").read_bytes())
    return path


def _yaml(tmp: Path, real) -> Path:
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump({"threshold": 0.4, "names": ["a", "b"]}))
    return path


def _config_yaml(tmp: Path, real) -> Path:
    path = tmp / "xception.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "xception"}}))
    return path


def _txt(tmp: Path, real) -> Path:
    path = tmp / "weights.txt"
    path.write_text("these are not weights\n")
    return path


def _empty(tmp: Path, real) -> Path:
    path = tmp / "empty.ckpt"
    path.write_bytes(b"")
    return path


def _folder(tmp: Path, real) -> Path:
    path = tmp / "run_folder"
    path.mkdir()
    return path


def _cut_safetensors(tmp: Path, real) -> Path:
    return _cut(real["safetensors"], tmp / "cut.safetensors")


def _cut_ckpt(tmp: Path, real) -> Path:
    return _cut(real["ckpt"], tmp / "cut.ckpt")


BAD: dict[str, tuple[Callable[[Path, dict], Path], str]] = {
    # kind: (how to make it, what the message must say)
    "random bytes": (_random, "unknown format"),
    "png": (_png, "PNG image"),
    "yaml": (_yaml, "without an 'ensemble:' section"),
    "config yaml": (_config_yaml, "--config"),
    "txt": (_txt, "text file"),
    "empty": (_empty, "truncated or damaged"),
    "folder": (_folder, "is a folder; give the checkpoint file inside it"),
    "truncated safetensors": (_cut_safetensors, "truncated or damaged"),
    "truncated ckpt": (_cut_ckpt, "truncated or damaged"),
}


def assert_clear(err: pytest.ExceptionInfo, path: Path, says: str = "") -> str:
    msg = str(err.value)
    assert isinstance(err.value, (CheckpointError, ConfigError)), type(err.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    assert "weights_only=False" not in msg and "weights_only" not in msg, msg
    assert says in msg, msg
    return msg


def test_the_real_checkpoints_load(real):
    for path in real.values():
        assert load_detector(path).threshold == 0.5


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("loader", ["load_model", "load_detector", "read_state_dict"])
def test_bad_file_gets_one_clear_line(kind, loader, real, tmp_path):
    make, says = BAD[kind]
    path = make(tmp_path, real)
    load = {"load_model": load_model, "load_detector": load_detector,
            "read_state_dict": read_state_dict}[loader]
    with pytest.raises((CheckpointError, ConfigError)) as err:
        load(path)
    msg = assert_clear(err, path, says)
    if kind in ("random bytes", "png", "yaml", "txt"):
        assert ".safetensors" in msg and ".ckpt" in msg  # what is accepted


def test_bad_file_with_a_model_config_fails_before_building(real, tmp_path):
    # With --config the file is any weights file; the same checks apply.
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": TINY}))
    for kind in ("png", "empty", "truncated safetensors", "truncated ckpt"):
        make, says = BAD[kind]
        sub = tmp_path / kind.replace(" ", "_")
        sub.mkdir()
        path = make(sub, real)
        with pytest.raises(CheckpointError) as err:
            load_detector(path, config)
        assert_clear(err, path, says)


def test_folder_hint_names_the_checkpoints_inside(real, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(real["safetensors"].read_bytes())
    (run / "checkpoints" / "best.ckpt").write_bytes(real["ckpt"].read_bytes())
    with pytest.raises(CheckpointError) as err:
        load_model(run)
    msg = assert_clear(err, run, "is a folder")
    assert str(run / "model.safetensors") in msg
    assert str(run / "checkpoints" / "best.ckpt") in msg


def test_truncated_zip_and_safetensors_say_why(real, tmp_path):
    with pytest.raises(CheckpointError) as err:
        sniff_weights_file(_cut_ckpt(tmp_path, real))
    assert "zip directory" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        sniff_weights_file(_cut_safetensors(tmp_path, real))
    assert "the file has" in str(err.value)
    short = tmp_path / "header.safetensors"
    short.write_bytes(real["safetensors"].read_bytes()[:20])  # cut inside the header
    with pytest.raises(CheckpointError) as err:
        load_detector(short)
    assert_clear(err, short, "truncated or damaged")


def test_damaged_pickle_inside_a_zip_is_damaged_not_refused(real, tmp_path):
    data = bytearray(real["ckpt"].read_bytes())
    start = data.index(b"data.pkl") + len(b"data.pkl")
    data[start + 40:start + 240] = bytes(200)  # zeros over the pickle, directory intact
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_detector(path)
    msg = assert_clear(err, path, "truncated or damaged")
    assert "refused" not in msg


def test_plain_pickle_is_not_unpickled(tmp_path):
    import pickle

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert_clear(err, path, "plain Python pickle")


@pytest.mark.parametrize("protocol", [2, 4])
def test_legacy_torch_file_loads_and_its_truncation_is_reported(protocol, tmp_path):
    det = _tiny_detector()
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": det.state_dict()}, legacy, _use_new_zipfile_serialization=False,
               pickle_protocol=protocol)
    try:
        assert set(read_state_dict(legacy)) == set(det.state_dict())
    except CheckpointError as exc:
        # torch's weights-only reader does not take pickle protocol 4 (its FRAME instruction):
        # the file is recognised, and refused in one line without bypass advice.
        assert protocol >= 4, exc
        msg = str(exc)
        assert "\n" not in msg and legacy.name in msg and "weights_only" not in msg
        assert "does not support" in msg
    cut = _cut(legacy, tmp_path / "legacy_cut.pth")
    with pytest.raises(CheckpointError) as err:
        read_state_dict(cut)
    assert_clear(err, cut, "truncated or damaged")


def test_object_needing_code_is_refused_without_bypass_advice(tmp_path):
    import fractions

    path = tmp_path / "objects.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError) as err:
        load_detector(path)
    msg = assert_clear(err, path, "fractions.Fraction")
    assert "never runs pickled code" in msg and "state dict" in msg


# -- ensemble files -----------------------------------------------------------------------------


def _ensemble(path: Path, *members: str | Path) -> Path:
    path.write_text(yaml.safe_dump(
        {"ensemble": {"members": [{"checkpoint": str(m)} for m in members]}}))
    return path


def test_ensemble_naming_itself(real, tmp_path):
    path = _ensemble(tmp_path / "self.yaml", "self.yaml", real["ckpt"])
    with pytest.raises(ConfigError) as err:
        load_model(path)
    assert_clear(err, path, "is this ensemble file itself")


def test_ensembles_naming_each_other(real, tmp_path):
    a = _ensemble(tmp_path / "a.yaml", "b.yaml", real["ckpt"])
    b = _ensemble(tmp_path / "b.yaml", "a.yaml", real["safetensors"])
    for path, other in ((a, b), (b, a)):
        with pytest.raises(ConfigError) as err:
            load_model(path)
        msg = assert_clear(err, path, "cycle")
        assert other.name in msg
        assert "an ensemble member must be a checkpoint, not another ensemble file" in msg


def test_nested_ensemble_is_refused(real, tmp_path):
    inner = _ensemble(tmp_path / "inner.yaml", real["ckpt"], real["safetensors"])
    outer = _ensemble(tmp_path / "outer.yaml", "inner.yaml", real["ckpt"])
    with pytest.raises(ConfigError) as err:
        load_model(outer)
    msg = assert_clear(err, outer, "an ensemble member must be a checkpoint, not another ensemble file")
    assert "inner.yaml" in msg
    assert len(load_model(inner).members) == 2  # the inner file itself is a fine ensemble


def test_ensemble_member_that_is_a_bad_file(real, tmp_path):
    bad = _txt(tmp_path, real)
    path = _ensemble(tmp_path / "ens.yaml", real["ckpt"], bad.name)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert_clear(err, bad, "text file")


def test_ensemble_file_where_one_checkpoint_is_needed(real, tmp_path):
    path = _ensemble(tmp_path / "ens.yaml", real["ckpt"], real["safetensors"])
    with pytest.raises(CheckpointError) as err:
        load_detector(path)  # export and calibrate take one checkpoint
    assert_clear(err, path, "an ensemble file")


def test_broken_yaml_as_checkpoint(tmp_path):
    path = tmp_path / "ens.yaml"
    path.write_text("ensemble:\n  members: [a.ckpt, b.ckpt\n  method: soft\n")
    with pytest.raises((CheckpointError, ConfigError)) as err:
        load_model(path)
    assert_clear(err, path, "does not parse")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises((CheckpointError, ConfigError)) as err:
        load_model(binary)
    assert_clear(err, binary, "unknown format")


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random bytes", "folder"])
def test_predict_command_reports_a_bad_checkpoint_without_a_traceback(kind, real, tmp_path):
    bad = BAD[kind][0](tmp_path, real)
    image = tmp_path / "some.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    env = {**os.environ, "COLUMNS": "400"}
    env.pop("DEEPFAKE_DETECT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "deepfake_detect", "predict", "--checkpoint", str(bad), str(image),
         "--out", str(tmp_path / "preds.csv")],
        check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    assert bad.name in output and "weights_only" not in output
    assert not (tmp_path / "preds.csv").exists()
