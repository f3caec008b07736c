"""The detector registry as a leaf: built-ins imported lazily by name, third-party detectors from
an entry point (``deepfake_detect.detectors``) or ``register_detector`` in user code, explicit
``weights_follow``, and README tables generated from the registry."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from conftest import REPO, make_dataset, tiny_config
from pydantic import Field
from torch import nn

from deepfake_detect.errors import ConfigError
from deepfake_detect.models import (
    Detector,
    ModelConfig,
    build_detector,
    register_detector,
    registry,
)
from deepfake_detect.models.registry import (
    BUILTIN_MODULES,
    ENTRY_POINT_GROUP,
    get_entry,
    list_detectors,
    validate_model_config,
)

PLUGIN = '''
"""A detector that lives outside deepfake_detect, found through its entry point."""

from pydantic import Field
from torch import nn

from deepfake_detect.models import Detector, ModelConfig, register_detector


class TinyPluginConfig(ModelConfig):
    """A two-layer CNN from a plugin package."""

    width: int = Field(8, ge=1, description="convolution channels")


@register_detector("tiny_plugin", config=TinyPluginConfig, defaults={"input_size": 32},
                   description="tiny CNN from my_plugin")
class TinyPluginDetector(Detector):
    def __init__(self, config, *, weights_follow=False):
        super().__init__(config, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.backbone = nn.Sequential(
            nn.Conv2d(3, config.width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(config.width, config.num_classes)
        self.apply_freeze()

    def extract_features(self, x):
        return self.backbone(x)
'''


def write_distribution(site: Path, dist: str, entry_points: dict[str, str],
                       files: dict[str, str]) -> Path:
    """An installed distribution as importlib.metadata finds it on sys.path: the package files
    and ``<dist>-0.1.dist-info`` with METADATA and entry_points.txt."""
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def run_cli(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("DEEPFAKE_DETECT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "deepfake_detect", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test vanish after it (the built-ins stay loaded)."""
    list_detectors()  # every built-in registered before the copy, so none is lost with it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LOADED_PLUGINS", set(registry._LOADED_PLUGINS))


# -- a plugin through the command line ------------------------------------------------------------


def test_plugin_detector_trains_evaluates_and_predicts_through_the_cli(tmp_path):
    site = write_distribution(tmp_path / "site", "my_plugin", {"tiny_plugin": "my_plugin"},
                              {"my_plugin/__init__.py": PLUGIN})
    data = make_dataset(tmp_path / "toy", videos_per_class=2, frames=2,
                        splits=("train", "val", "test"))
    cfg = tiny_config(data, tmp_path / "runs", epochs=1)
    cfg["model"] = {"name": "tiny_plugin", "width": 4}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    listed = run_cli(["models"], tmp_path, site)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "tiny_plugin" in listed.stdout and "tiny CNN from my_plugin" in listed.stdout

    ref = run_cli(["config", "--reference"], tmp_path, site)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert "#### `model` for `tiny_plugin`" in ref.stdout and "`model.width`" in ref.stdout

    trained = run_cli(["train", "-c", "cfg.yaml", "--out", "run"], tmp_path, site)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    ckpt = tmp_path / "run" / "model.safetensors"
    assert ckpt.is_file()

    evaluated = run_cli(["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                         "--out", "eval", "--workers", "0", "--no-plots"], tmp_path, site)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    metrics = json.loads((tmp_path / "eval" / "toy" / "metrics.json").read_text())
    assert metrics["frame"]["n"] == 8

    crop = next((data / "test" / "fake").glob("*.png"))
    helped = run_cli(["predict", "--help"], tmp_path, site)
    crops_flag = ["--crops"] if "--crops" in helped.stdout else []
    predicted = run_cli(["predict", "--checkpoint", str(ckpt), str(crop), *crops_flag,
                         "--out", "preds.csv", "--workers", "0"], tmp_path, site)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    with open(tmp_path / "preds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["score"]) <= 1.0

    # The package knows nothing of the plugin: no file of it names the detector, and this
    # process (without the plugin's site folder) does not list it.
    package = [p for p in (REPO / "src").rglob("*") if p.is_file()]
    assert not [p for p in package if b"tiny_plugin" in p.read_bytes()]
    assert "tiny_plugin" not in list_detectors()


def test_a_broken_plugin_is_one_line_naming_its_entry_point(tmp_path):
    site = write_distribution(tmp_path / "site", "broken_plugin",
                              {"broken": "broken_plugin.detectors"},
                              {"broken_plugin/__init__.py": "",
                               "broken_plugin/detectors.py": "import no_such_module_xyz\n"})
    for args in (["models"], ["config", "--reference"]):
        proc = run_cli(args, tmp_path, site)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert "Traceback" not in output, output
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1, output
        assert "'broken = broken_plugin.detectors'" in output and "broken_plugin 0.1" in output
        assert "no_such_module_xyz" in output
    # Built-in detectors do not need the plugins: a built-in name never loads them.
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, tmp_path / "runs")))
    proc = run_cli(["config", "-c", str(config)], tmp_path, site)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_broken_entry_point_in_process(clean_registry, monkeypatch):
    eps = [EntryPoint("broken", "no_such_module_xyz", ENTRY_POINT_GROUP),
           EntryPoint("also", "json:no_such_attr", ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    with pytest.raises(ConfigError) as info:
        get_entry("broken")
    message = str(info.value)
    assert "\n" not in message and "'broken = no_such_module_xyz'" in message
    assert "ModuleNotFoundError" in message
    with pytest.raises(ConfigError, match=r"'also = json:no_such_attr'.*AttributeError"):
        get_entry("also")
    assert get_entry("xception").name == "xception"  # built-ins never load plugins


# -- register_detector in user code ---------------------------------------------------------------


class UserConfig(ModelConfig):
    """A detector registered by user code."""

    hidden: int = Field(4, ge=1, description="feature width")


class UserDetector(Detector):
    built_with: ClassVar[list[bool]] = []

    def __init__(self, config: UserConfig, *, weights_follow: bool = False) -> None:
        super().__init__(config, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        UserDetector.built_with.append(weights_follow)
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, config.hidden))
        self.head = nn.Linear(config.hidden, config.num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def test_register_detector_in_user_code(clean_registry):
    register_detector("user_det", config=UserConfig, defaults={"hidden": 6})(UserDetector)
    assert "user_det" in list_detectors()
    entry = get_entry("user_det")
    assert entry.description == "" and entry.module == __name__ and entry.takes_weights_follow

    UserDetector.built_with.clear()
    det = build_detector({"name": "user_det"})
    assert det.config.hidden == 6 and det(torch.zeros(2, 3, 16, 16)).shape == (2, 2)
    again = build_detector({"name": "user_det"}, weights=det.state_dict())
    assert UserDetector.built_with == [False, True]  # weights_follow is passed explicitly
    assert torch.equal(again.head.weight, det.head.weight)

    # A factory without the keyword is called without it.
    calls = []

    @register_detector("user_plain", config=UserConfig, description="plain factory")
    def user_plain(cfg):
        calls.append(cfg.name)
        return UserDetector(cfg)

    assert build_detector({"name": "user_plain"}).config.name == "user_plain" and calls
    assert get_entry("user_plain").description == "plain factory"
    # Registering the same factory again (a re-run cell) replaces it; another one is refused.
    register_detector("user_plain", config=UserConfig)(user_plain)
    with pytest.raises(ValueError, match="registered twice"):
        register_detector("user_plain", config=UserConfig)(lambda cfg: UserDetector(cfg))
    with pytest.raises(ValueError, match="built-in"):
        register_detector("xception", config=UserConfig)(UserDetector)
    with pytest.raises(ConfigError, match="model.hidden"):
        validate_model_config({"name": "user_det", "hidden": 0})


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ConfigError, match=r"unknown detector 'xceptoin'\. Did you mean xception"):
        validate_model_config({"name": "xceptoin"})
    with pytest.raises(ConfigError, match=r"Did you mean .*efficientnet_b4"):
        get_entry("efficientnet-b4")


# -- the registry is a leaf -----------------------------------------------------------------------


def test_registry_imports_no_family_and_loads_one_module_per_name():
    code = textwrap.dedent("""
        import sys
        from deepfake_detect.models import registry
        families = ["zoo", "timm_detector", "effort", "fsfm", "dual_stream"]
        loaded = lambda: {f for f in families if f"deepfake_detect.models.{f}" in sys.modules}
        assert loaded() == set(), loaded()
        registry.get_entry("effort")
        assert loaded() == {"effort"}, loaded()
        registry.get_entry("xception")
        assert loaded() == {"effort", "zoo", "timm_detector"}, loaded()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_builtin_map_matches_what_the_modules_register():
    names = set(list_detectors())
    assert set(BUILTIN_MODULES) <= names
    assert {n: get_entry(n).module for n in BUILTIN_MODULES} == BUILTIN_MODULES
    source = (REPO / "src/deepfake_detect/models/registry.py").read_text()
    assert "ContextVar" not in source and "import deepfake_detect.models." not in source


def test_family_modules_do_not_read_a_context_variable():
    for name in ("effort", "timm_detector", "dual_stream", "fsfm", "zoo"):
        text = (REPO / f"src/deepfake_detect/models/{name}.py").read_text()
        assert "weights_follow()" not in text and "ContextVar" not in text, name


# -- README tables come from the registry ---------------------------------------------------------


def _readme_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- {marker}:start -->\n(.*)<!-- {marker}:end -->", readme, re.DOTALL)
    assert block, f"README lacks the {marker} markers"
    return block.group(1).strip()


def test_readme_model_zoo_is_generated_from_the_registry():
    from deepfake_detect.models.reference import model_table

    assert _readme_block("model-zoo") == model_table(builtin_only=True).strip(), (
        "README model zoo is stale: paste deepfake_detect.models.reference.model_table("
        "builtin_only=True)"
    )


def test_readme_config_reference_is_generated_from_the_registry():
    from deepfake_detect.models.reference import config_reference

    assert _readme_block("config-reference") == config_reference(builtin_only=True).strip()


def test_reference_lists_every_builtin_detector_once():
    from deepfake_detect.models.reference import config_reference, model_table

    table = model_table(builtin_only=True)
    assert re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE) == list(BUILTIN_MODULES)
    reference = config_reference(builtin_only=True)
    headers = re.findall(r"^#### `model` for (.*)$", reference, re.MULTILINE)
    named = [n for h in headers for n in re.findall(r"`(\w+)`", h)]
    assert sorted(named) == sorted(BUILTIN_MODULES)


def test_builtin_factories_take_weights_follow(tmp_path):
    assert all(get_entry(n).takes_weights_follow for n in BUILTIN_MODULES)
    cfg = {"name": "timm", "timm_name": "test_resnet", "input_size": 32,
           "pretrained": str(tmp_path / "absent.safetensors")}
    with pytest.raises(Exception, match="absent.safetensors"):
        build_detector(cfg)  # the backbone file is read when nothing follows
    source = build_detector({**cfg, "pretrained": None})
    # With detector weights following, model.pretrained is not read at all.
    det = build_detector(cfg, weights=source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(det.state_dict().values(),
                                                  source.state_dict().values(), strict=True))
