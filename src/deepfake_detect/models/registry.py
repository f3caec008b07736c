"""Registry of detectors by name, in the style of timm's ``register_model``.

A detector is a factory registered with the config class that validates its ``model`` section::

    @register_detector("my_detector", config=MyConfig, defaults={"input_size": 224})
    def my_detector(cfg: MyConfig, *, weights_follow: bool = False) -> Detector: ...

``weights_follow`` is True when :func:`build_detector` loads whole-detector weights right after
the factory returns (``model.weights``, a checkpoint): the factory may then skip work those
weights overwrite (random initialisation, reading ``model.pretrained``, downloads, Effort's
SVD). A factory (or a ``Detector`` class) that does not take the keyword is called without it.

This module is a leaf: it imports none of the detector families. Detectors are found by name in
three places, in this order:

1. the built-in families, imported lazily through :data:`BUILTIN_MODULES` (name -> module);
2. plugins: the entry points of group ``deepfake_detect.detectors`` (``pyproject.toml``::

       [project.entry-points."deepfake_detect.detectors"]
       my_detector = "my_package.my_detector"

   each names a module, or an object in one, whose import registers detectors; an entry point
   named like the detector is loaded first, the others only when the name is still unknown);
3. ``register_detector`` called by user code before the detector is used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from deepfake_detect.config.loading import read_yaml, validate
from deepfake_detect.errors import ConfigError
from deepfake_detect.models.detector import Detector, ModelConfig

ENTRY_POINT_GROUP = "deepfake_detect.detectors"

_ZOO = "deepfake_detect.models.zoo"
# Built-in detector name -> the module whose import registers it (checked by the tests).
BUILTIN_MODULES: dict[str, str] = {
    "xception": _ZOO,
    "mobilenetv2": _ZOO,
    **{f"efficientnet_b{i}": _ZOO for i in range(8)},
    "swin_base": _ZOO,
    "vit_base": _ZOO,
    "timm": _ZOO,
    "fsfm": "deepfake_detect.models.fsfm",
    "effort": "deepfake_detect.models.effort",
    "dual_stream": "deepfake_detect.models.dual_stream",
}


@dataclass(frozen=True)
class DetectorCard:
    """The detector's row in the README model zoo (``deepfake_detect.models.reference``)."""

    architecture: str
    input: str = ""
    normalisation: str = ""
    weights: str = ""


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    factory: Callable[..., Detector]
    config_cls: type[ModelConfig]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    card: DetectorCard | None = None
    # Where the factory lives (the built-in module, a plugin's module, or user code).
    module: str = ""
    takes_weights_follow: bool = False

    def build(self, cfg: ModelConfig, *, weights_follow: bool = False) -> Detector:
        """Run the factory on a validated config (no weights loaded: see build_detector)."""
        if self.takes_weights_follow:
            return self.factory(cfg, weights_follow=weights_follow)
        return self.factory(cfg)


_REGISTRY: dict[str, DetectorEntry] = {}
_LOADED_PLUGINS: set[str] = set()


def _takes_weights_follow(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == "weights_follow" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def register_detector(
    name: str,
    config: type[ModelConfig] = ModelConfig,
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    card: DetectorCard | None = None,
) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Register ``factory(cfg, *, weights_follow=False) -> Detector`` under ``name``.

    ``config`` validates the ``model`` section (a ``ModelConfig`` subclass; its docstring heads
    the detector's part of the config reference), ``defaults`` are model keys filled in before
    validation, ``description`` is the one line of ``deepfake-detect models`` (default: the
    factory's first docstring line) and ``card`` the row of the README model zoo.
    """
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise TypeError(f"register_detector({name!r}): config must be a ModelConfig subclass")

    def wrap(fn: Callable[..., Detector]) -> Callable[..., Detector]:
        module = getattr(fn, "__module__", "") or ""
        builtin = BUILTIN_MODULES.get(name)
        if builtin is not None and module != builtin:
            raise ValueError(f"detector {name!r} is a built-in detector; choose another name")
        old = _REGISTRY.get(name)
        # The same factory registered again (its module re-run, e.g. a notebook cell) replaces
        # the old entry; another factory under a taken name is an error.
        if old is not None and (old.module, _qualname(old.factory)) != (module, _qualname(fn)):
            raise ValueError(
                f"detector {name!r} is registered twice ({old.module} and {module})"
            )
        _REGISTRY[name] = DetectorEntry(
            name=name,
            factory=fn,
            config_cls=config,
            defaults=dict(defaults or {}),
            description=description or _first_line(fn.__doc__),
            card=card,
            module=module,
            takes_weights_follow=_takes_weights_follow(fn),
        )
        return fn

    return wrap


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))


# -- lookup ---------------------------------------------------------------------------------------


def _import_builtin(name: str) -> None:
    module = BUILTIN_MODULES[name]
    importlib.import_module(module)
    if name not in _REGISTRY:  # pragma: no cover - guarded by the tests
        raise RuntimeError(f"built-in module {module} did not register detector {name!r}")


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _describe_entry_point(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    origin = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name} = {ep.value}'{origin} (group {ENTRY_POINT_GROUP})"


def _load_plugin(ep: Any) -> None:
    key = f"{ep.name}={ep.value}"
    if key in _LOADED_PLUGINS:
        return
    try:
        ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of third-party code, one line
        reason = " ".join(str(exc).split()) or "no message"
        raise ConfigError(
            f"detector plugin {ep.name!r} failed to load: {_describe_entry_point(ep)} raised "
            f"{type(exc).__name__}: {reason} (fix or uninstall that package)"
        ) from None
    _LOADED_PLUGINS.add(key)


def _load_plugins(preferred: str | None = None) -> None:
    """Load the plugin entry points: the one named ``preferred`` first, the others only when
    ``preferred`` is None or is still not registered after it."""
    eps = _entry_points()
    if preferred is not None:
        for ep in eps:
            if ep.name == preferred:
                _load_plugin(ep)
        if preferred in _REGISTRY:
            return
    for ep in eps:
        _load_plugin(ep)


def _load_all() -> None:
    for name in BUILTIN_MODULES:
        if name not in _REGISTRY:
            _import_builtin(name)
    _load_plugins()


def builtin_detectors() -> list[str]:
    """Names of the built-in detectors, in the order of the README model zoo."""
    return list(BUILTIN_MODULES)


def list_detectors() -> list[str]:
    """Every detector name: built-in, from plugins and registered by user code (sorted)."""
    _load_all()
    return sorted(_REGISTRY)


def get_entry(name: str) -> DetectorEntry:
    """The registered detector ``name``, importing its module (built-in or plugin) on demand."""
    if name not in _REGISTRY:
        if name in BUILTIN_MODULES:
            _import_builtin(name)
        else:
            _load_plugins(preferred=name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    _load_all()  # every name, for the hint
    close = get_close_matches(name, _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"model.name: unknown detector {name!r}.{hint} Known: {', '.join(sorted(_REGISTRY))}"
    )


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
    ``before_load`` (e.g. adding the LoRA adapters whose keys the weights hold) has run; the
    factory is told so (``weights_follow=True``).
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
    detector = get_entry(cfg.name).build(cfg, weights_follow=weights is not None)
    if before_load is not None:
        before_load(detector)
    if weights is not None:
        from deepfake_detect.models.weights import load_detector_weights

        # The detector was built to receive these weights: take them without a copy.
        load_detector_weights(detector, weights, source=source, assign=True)
    return detector
