"""Registry of detectors by name, in the style of timm's ``register_model``.

A detector is registered with the config class that validates its ``model`` section::

    @register_detector("my_detector", config=MyConfig, defaults={"input_size": 224})
    def my_detector(cfg: MyConfig) -> Detector: ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from deepfake_detect.config.loading import read_yaml, validate
from deepfake_detect.errors import ConfigError
from deepfake_detect.models.detector import Detector, ModelConfig


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    factory: Callable[[Any], Detector]
    config_cls: type[ModelConfig]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, DetectorEntry] = {}
_WEIGHTS_FOLLOW: ContextVar[bool] = ContextVar("deepfake_detect_weights_follow", default=False)


def weights_follow() -> bool:
    """True inside a factory whose detector gets all its weights loaded right after building.

    Factories may then skip work that the loaded weights overwrite: random initialisation,
    reading backbone weights, decompositions (Effort's SVD).
    """
    return _WEIGHTS_FOLLOW.get()


def register_detector(
    name: str,
    config: type[ModelConfig] = ModelConfig,
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
) -> Callable[[Callable[[Any], Detector]], Callable[[Any], Detector]]:
    def wrap(fn: Callable[[Any], Detector]) -> Callable[[Any], Detector]:
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} is registered twice")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0:1]
        _REGISTRY[name] = DetectorEntry(
            name, fn, config, dict(defaults or {}), doc if isinstance(doc, str) else "".join(doc)
        )
        return fn

    return wrap


def _ensure_builtin() -> None:
    # Importing the package registers the built-in detectors.
    import deepfake_detect.models.zoo  # noqa: F401


def list_detectors() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_entry(name: str) -> DetectorEntry:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.name: unknown detector {name!r}.{hint} Known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def validate_model_config(config: Mapping[str, Any] | ModelConfig, source: str = "") -> ModelConfig:
    """Validate a ``model`` section with its detector's config class (defaults filled in)."""
    if isinstance(config, ModelConfig):
        return config
    if "name" not in config:
        raise ConfigError("model.name is required: the registry name of the detector")
    entry = get_entry(str(config["name"]))
    data = {**entry.defaults, **dict(config)}
    return validate(entry.config_cls, data, prefix="model", source=source)


def build_detector(
    config: Mapping[str, Any] | ModelConfig | str | Path,
    weights: str | Path | Mapping[str, Any] | None = None,
    source: str | Path | None = None,
    before_load: Callable[[Detector], None] | None = None,
) -> Detector:
    """Build a detector from a config (a mapping, a validated config, or a YAML path).

    A YAML path may hold a full experiment config (with a ``model`` section) or only the model
    section. ``weights`` (default: the config's ``model.weights``) names a file of detector
    weights, or is an already-read state dict (then ``source`` names it in errors): this tool's
    checkpoints or an official release the detector understands. It is loaded strictly, after
    ``before_load`` (e.g. adding the LoRA adapters whose keys the weights hold) has run.
    """
    yaml_source = ""
    if isinstance(config, (str, Path)):
        yaml_source = str(config)
        raw = read_yaml(config)
        config = raw.get("model", raw) if isinstance(raw.get("model"), dict) else raw
    cfg = validate_model_config(config, source=yaml_source)
    if weights is None:
        weights = cfg.weights
    elif cfg.weights is None and isinstance(weights, (str, Path)):
        # The config records where the weights came from (detectors may read files beside them).
        cfg = cfg.model_copy(update={"weights": Path(weights)})
    token = _WEIGHTS_FOLLOW.set(weights is not None)
    try:
        detector = get_entry(cfg.name).factory(cfg)
    finally:
        _WEIGHTS_FOLLOW.reset(token)
    if before_load is not None:
        before_load(detector)
    if weights is not None:
        from deepfake_detect.models.weights import load_detector_weights

        # The detector was built to receive these weights: take them without a copy.
        load_detector_weights(detector, weights, source=source, assign=True)
    return detector
