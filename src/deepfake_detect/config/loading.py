"""Reading YAML configs, applying ``key=value`` overrides and turning validation errors into
messages that name the key, what was given and what is allowed."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deepfake_detect.config.schema import ExperimentConfig
from deepfake_detect.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with dotted ``a.b.c=value`` overrides applied.

    Values are parsed as YAML so ``train.epochs=3`` gives an int and ``data.path=[a,b]`` a list.
    """
    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def format_validation_error(exc: ValidationError, prefix: str = "", source: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; README 'Config reference' lists every key)"
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc or '<root>'}: {msg}")
    where = f" in {source}" if source else ""
    return f"invalid config{where}:\n" + "\n".join(lines)


def validate(model_cls: type[M], data: Mapping[str, Any], prefix: str = "", source: str = "") -> M:
    try:
        return model_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix, source)) from None


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Load an experiment config from YAML (or ``base``), apply overrides and validate it.

    The ``model`` section is validated separately by the model registry when the detector is
    built (``deepfake_detect.models.validate_model_config``).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = read_yaml(path)
    data = apply_overrides(data, overrides)
    if "model" not in data:
        raise ConfigError(
            f"invalid config{f' in {path}' if path else ''}: the 'model' section is missing "
            "(e.g. model: {name: efficientnet_b0}); `deepfake-detect models` lists the names"
        )
    return validate(ExperimentConfig, data, source=str(path) if path else "")


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain, YAML-friendly dict of a config (paths as strings)."""
    return config.model_dump(mode="json")
