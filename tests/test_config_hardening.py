"""Bad config input (binary files, folders, alias bombs, inf/nan, thresholds) gives a short
ConfigError naming the file or key, never a traceback, a hang or a memory blow-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REPO
from deepfake_detect.cli import app
from deepfake_detect.config import load_config
from deepfake_detect.config.loading import (
    MAX_YAML_NODES,
    apply_overrides,
    check_threshold,
    read_yaml,
    safe_yaml_load,
)
from deepfake_detect.config.schema import EnsembleConfig, Strict
from deepfake_detect.errors import ConfigError
from deepfake_detect.models.registry import validate_model_config

runner = CliRunner()
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02"


def alias_bomb(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """'Billion laughs': ``width ** levels`` values once every alias is expanded."""
    lines = [f"{indent}l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# --- files that are not text YAML ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [PNG_HEADER, bytes(range(256)) * 4, b"model: {name: x}\x00\x00"],
    ids=["png", "random_bytes", "nul_bytes"],
)
def test_binary_config_is_a_config_error_naming_the_file(tmp_path, content):
    path = tmp_path / "picture.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a text YAML file") as info:
        read_yaml(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="not a text YAML file"):
        load_config(path)


def test_control_characters_are_not_a_text_yaml_file(tmp_path):
    path = tmp_path / "ctl.yaml"
    path.write_bytes(b"model: {name: xception}\nseed: \x07\n")  # valid UTF-8, not printable
    with pytest.raises(ConfigError, match="not a text YAML file") as info:
        read_yaml(path)
    assert str(path) in str(info.value)


def test_folder_missing_and_unreadable_paths_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder") as info:
        read_yaml(tmp_path)
    assert str(tmp_path) in str(info.value)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        read_yaml(missing)
    assert str(missing) in str(info.value)
    if hasattr(os, "getuid") and os.getuid() != 0:  # root reads any file
        locked = tmp_path / "locked.yaml"
        locked.write_text("model: {name: xception}\n")
        locked.chmod(0)
        try:
            with pytest.raises(ConfigError, match="cannot read") as info:
                read_yaml(locked)
            assert str(locked) in str(info.value)
        finally:
            locked.chmod(0o600)


def test_utf8_bom_and_plain_configs_still_load(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffmodel: {name: xception}\nname: café\n".encode())
    assert read_yaml(path) == {"model": {"name": "xception"}, "name": "café"}


# --- alias bombs --------------------------------------------------------------------------------


def test_alias_bomb_is_refused():
    with pytest.raises(ConfigError, match="expands to more than") as info:
        safe_yaml_load(alias_bomb(), "bomb.yaml")
    assert str(info.value).startswith("bomb.yaml: ")


@pytest.mark.parametrize("section", ["model", "data", "train", "eval"])
def test_alias_bomb_in_any_section_is_refused_by_load_config(tmp_path, section):
    path = tmp_path / "bomb.yaml"
    path.write_text("model: {name: xception}\n" if section != "model" else "")
    with path.open("a") as fh:
        fh.write(f"{section}:\n" + alias_bomb(indent="  "))
    with pytest.raises(ConfigError, match="expands to more than") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_merge_key_bomb_is_refused():
    # "<<" merges copy every key of every merged mapping before the dict is built.
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}"]
    for i in range(1, 8):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}")
    with pytest.raises(ConfigError, match="expands to more than"):
        safe_yaml_load("\n".join(lines), "merge.yaml")


def test_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        safe_yaml_load("a: &a [1, *a]\n", "loop.yaml")
    with pytest.raises(ConfigError, match="nested more than"):
        safe_yaml_load("a: " + "[" * 150 + "]" * 150, "deep.yaml")
    with pytest.raises(ConfigError, match="nested more than"):  # past Python's recursion limit
        safe_yaml_load("a: " + "[" * 5000 + "]" * 5000, "deeper.yaml")


def test_alias_bomb_in_an_override_is_refused():
    bomb = "{" + alias_bomb().strip().replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match="override .*expands to more than"):
        apply_overrides({}, [f"model.extra={bomb}"])


def test_small_aliases_still_work(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "model: {name: xception}\n"
        "common: &aug {hflip: 0.25, blur: 0.1}\n"  # not a schema key: only to show loading
        "data:\n  augment: *aug\n"
        "train:\n  optimizer: &opt {name: adamw, lr: 2.0e-4}\n"
    )
    raw = read_yaml(path)
    assert raw["data"]["augment"] == {"hflip": 0.25, "blur": 0.1}
    path.write_text(
        "model: {name: xception}\n"
        "data:\n  augment: &aug {hflip: 0.25, blur: 0.1}\n"
        "train:\n  optimizer: {<<: {name: adamw}, lr: 2.0e-4}\n"
    )
    cfg = load_config(path)
    assert cfg.data.augment.hflip == 0.25 and cfg.data.augment.blur == 0.1
    assert cfg.train.optimizer.name == "adamw" and cfg.train.optimizer.lr == 2.0e-4


def test_a_list_just_under_the_limit_loads():
    width = 1000
    text = "a: &a [" + ", ".join(["1"] * width) + "]\nb: [" + ", ".join(["*a"] * 900) + "]\n"
    data = safe_yaml_load(text, "big.yaml")  # 1000 * 900 + ... < MAX_YAML_NODES values
    assert len(data["b"]) == 900 and len(data["b"][0]) == width
    assert 900 * (width + 1) < MAX_YAML_NODES


def test_plain_yaml_errors_still_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {name: xception\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        read_yaml(path)
    assert f'"{path}", line' in str(info.value)


def test_huge_integer_is_a_config_error(tmp_path):
    path = tmp_path / "int.yaml"
    path.write_text("model: {name: xception}\nseed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_yaml(path)


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_read_the_same_as_safe_load(config):
    import yaml

    assert read_yaml(config) == yaml.safe_load(config.read_text("utf-8"))


# --- inf / nan ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+999", "inf", "nan"])
def test_non_finite_lr_is_rejected_naming_the_key(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: xception}\n")
    with pytest.raises(ConfigError, match="train.optimizer.lr") as info:
        load_config(path, [f"train.optimizer.lr={value}"])
    assert "should be a finite number" in str(info.value)
    path.write_text(f"model: {{name: xception}}\ntrain: {{optimizer: {{lr: {value}}}}}\n")
    with pytest.raises(ConfigError, match="train.optimizer.lr"):
        load_config(path)


def test_non_finite_floats_rejected_in_other_sections_and_the_model_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: xception}\n")
    with pytest.raises(ConfigError, match="data.augment.rotation"):
        load_config(path, ["data.augment.rotation=.nan"])
    with pytest.raises(ConfigError, match=r"data.augment.noise_std"):
        load_config(path, ["data.augment.noise_std=[0.01, .inf]"])
    with pytest.raises(ConfigError, match="train.gradient_clip_val"):
        load_config(path, ["train.gradient_clip_val=.inf"])
    with pytest.raises(ConfigError, match="model.head.dropout"):
        validate_model_config({"name": "xception", "head": {"dropout": float("nan")}})


def test_every_config_model_rejects_inf_and_nan():
    from deepfake_detect.models import list_detectors

    list_detectors()  # imports every detector family, so that their config classes exist

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    classes = list(subclasses(Strict))
    assert EnsembleConfig in classes and len(classes) > 20
    for cls in classes:
        assert cls.model_config.get("allow_inf_nan") is False, cls.__name__


def test_ensemble_file_rejects_inf_temperature(tmp_path):
    from deepfake_detect.config.loading import validate

    raw = {"members": [{"checkpoint": "a.ckpt"}, {"checkpoint": "b.ckpt"}],
           "temperature": float("inf")}
    with pytest.raises(ConfigError, match="ensemble.temperature"):
        validate(EnsembleConfig, raw, prefix="ensemble")


def test_huge_invalid_value_gives_a_short_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: xception}\nseed: [" + ", ".join(["1"] * 100_000) + "]\n")
    with pytest.raises(ConfigError, match="seed") as info:
        load_config(path)
    assert len(str(info.value)) < 1000


# --- check_threshold ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 0, 1])
def test_check_threshold_accepts_unit_interval(value):
    assert check_threshold(value) == value


def test_check_threshold_passes_none_through():
    assert check_threshold(None) is None


@pytest.mark.parametrize("value", [-0.01, 1.01, float("inf"), float("-inf"), float("nan"), "x"])
def test_check_threshold_rejects_outside_or_non_finite(value):
    with pytest.raises(ConfigError, match="--threshold must be a number between 0 and 1"):
        check_threshold(value)
    with pytest.raises(ConfigError, match="^eval.threshold "):
        check_threshold(value, name="eval.threshold")


# --- the command line ---------------------------------------------------------------------------


def _bad_configs(tmp_path: Path) -> dict[str, Path]:
    png = tmp_path / "photo.png"
    png.write_bytes(PNG_HEADER)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("model: {name: xception}\ndata:\n" + alias_bomb(indent="  "))
    inf = tmp_path / "inf.yaml"
    inf.write_text("model: {name: xception}\ntrain: {optimizer: {lr: .inf}}\n")
    return {"png": png, "bomb": bomb, "inf": inf, "folder": tmp_path}


@pytest.mark.parametrize("command", ["config", "train"])
@pytest.mark.parametrize("kind", ["png", "bomb", "inf", "folder"])
def test_cli_bad_config_is_a_config_error(tmp_path, command, kind):
    path = _bad_configs(tmp_path)[kind]
    args = [command, "-c", str(path)]
    if command == "train":
        args += ["--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError), repr(result.exception)
    assert str(path) in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_cli_process_prints_one_error_and_no_traceback(tmp_path):
    bad = _bad_configs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for kind in ("png", "bomb"):
        proc = subprocess.run(
            [sys.executable, "-m", "deepfake_detect", "config", "-c", str(bad[kind])],
            capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "Traceback" not in output
        assert "error:" in output and bad[kind].name in output
