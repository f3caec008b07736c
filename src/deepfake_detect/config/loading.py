"""Reading YAML configs, applying ``key=value`` overrides and turning validation errors into
messages that name the key, what was given and what is allowed."""

from __future__ import annotations

import copy
import math
import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deepfake_detect.config.schema import ExperimentConfig
from deepfake_detect.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


#: Bounds on what a YAML config may hold. Configs are a few kilobytes; these stop a file that is
#: not a config, or an alias bomb ("billion laughs"), before it eats the memory or the time.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 1_000_000  # values with every alias expanded
MAX_YAML_DEPTH = 100


class _YamlTooLarge(Exception):
    pass


def _expanded_size(root: yaml.Node) -> int:
    """Number of nodes of ``root`` with every alias expanded (a shared node counts each time it
    is used), stopping as soon as it passes ``MAX_YAML_NODES``; refuses recursive aliases and
    nesting deeper than ``MAX_YAML_DEPTH``. Linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _YamlTooLarge("an alias (*name) refers to the value that contains it; "
                                 "a config cannot be recursive")
        if depth > MAX_YAML_DEPTH:
            raise _YamlTooLarge(f"values are nested more than {MAX_YAML_DEPTH} levels deep; "
                                 "flatten them")
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(key)
            children = (
                node.value if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair]
            )
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_YAML_NODES:
                    raise _YamlTooLarge(
                        f"it expands to more than {MAX_YAML_NODES:,} values (anchors &name "
                        "reused through aliases *name); use fewer aliases"
                    )
            open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root, 0)


def _yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses documents expanding to more than ``MAX_YAML_NODES``
    values. Raises ``yaml.YAMLError`` for bad YAML and ``_YamlTooLarge`` for a bomb."""
    loader = yaml.SafeLoader(text)
    loader.name = source  # error marks name the file instead of "<unicode string>"
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _YamlTooLarge(
                f"values are nested more than {MAX_YAML_DEPTH} levels deep; flatten them"
            ) from None
        if node is None:
            return None
        _expanded_size(node)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as exc:  # e.g. an int of more than 4300 digits
            raise yaml.constructor.ConstructorError(
                problem=f"a value cannot be read: {exc}"
            ) from None
    finally:
        loader.dispose()


def safe_yaml_load(text: str, source: str = "<text>") -> Any:
    """Parse YAML given by a user (a config, an ensemble file, an override value).

    Like ``yaml.safe_load``, but bounded: an alias bomb, recursive aliases or absurd nesting are
    refused quickly. Every failure is a ``ConfigError`` whose message starts with ``source``.
    """
    try:
        return _yaml_load(text, source)
    except _YamlTooLarge as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"{source}: not a text YAML file ({exc.reason}); give a YAML config such as "
            "configs/xception.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (a config or an ensemble file)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file; give a YAML file such as "
                          "configs/xception.yaml")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path} is not a regular file; give a YAML config file such as "
                          "configs/xception.yaml")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc}); "
                          "check the path and its permissions") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: over {MAX_YAML_BYTES // 2**20} MiB, too big for a config "
                          "file; give a YAML config such as configs/xception.yaml")
    try:
        if b"\x00" in raw:
            raise UnicodeError("it holds NUL bytes")
        text = raw.decode("utf-8-sig")
    except UnicodeError as exc:
        why = (f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8"
               if isinstance(exc, UnicodeDecodeError) else str(exc))
        raise ConfigError(
            f"{path}: not a text YAML file ({why}); give a UTF-8 YAML config such as "
            "configs/xception.yaml"
        ) from None
    data = safe_yaml_load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def check_threshold(value: float | None, name: str = "--threshold") -> float | None:
    """Return a decision threshold given on the command line, or raise ``ConfigError`` unless it
    is a finite number in [0, 1]. ``None`` (not given) passes through."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not math.isfinite(number) or not 0 <= number <= 1:
        raise ConfigError(f"{name} must be a number between 0 and 1 (e.g. 0.5), got {value!r}")
    return number


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
            value = _yaml_load(raw, f"override {item!r}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        except _YamlTooLarge as exc:
            raise ConfigError(f"override {item!r}: refused: {exc}") from None
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


def _short_repr(value: Any) -> str:
    """``repr`` cut short (a few items, a few levels), without building the full text first."""
    short = reprlib.Repr()
    short.maxlevel = 2
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = 6
    short.maxstring = short.maxother = short.maxlong = 200
    text = short.repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def format_validation_error(exc: ValidationError, prefix: str = "", source: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; README 'Config reference' lists every key)"
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {_short_repr(err['input'])})"
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
