"""Transfer strategies for any detector: which parameters train, and LoRA adapters (HF peft).

- ``fine_tuning``: the detector's own trainable set (everything for plain backbones; Effort its
  residuals), minus parameters under ``strategy.freeze_layers``.
- ``feature_extractor``: only the head trains (:meth:`Detector.head_parameter_names`); every
  other child module is frozen and kept in eval mode, so its outputs do not change between
  epochs, which is what makes feature caching valid.
- ``peft_lora``: the backbone is wrapped by ``peft.get_peft_model`` with adapters on
  ``lora.target_modules``; only adapters and head train. :func:`merge_lora` folds them into the
  plain layers for inference and export, :func:`save_adapter` writes them alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deepfake_detect.config.schema import LoraSettings, StrategyConfig
from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.outputs import atomic_target, atomic_write, follow_umask
from deepfake_detect.models.checkpoint_meta import CheckpointMeta
from deepfake_detect.models.detector import Detector, _example_prefixes

ADAPTER_META = "deepfake_detect.json"
HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"{self.trainable:,} trainable of {self.total:,} ({share:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(
        sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
    )


def apply_strategy(detector: Detector, strategy: StrategyConfig) -> ParameterCount:
    """Set up ``detector`` for training with ``strategy``; returns the parameter counts."""
    if strategy.name == "feature_extractor":
        _feature_extractor(detector)
    elif strategy.name == "peft_lora":
        apply_lora(detector, strategy.lora)
    else:
        _freeze_layers(detector, strategy.freeze_layers)
    if not any(p.requires_grad for p in detector.parameters()):
        raise ConfigError(
            f"strategy {strategy.name}: no parameter of detector {detector.config.name!r} is "
            "left to train; check strategy.freeze_layers and model.freeze"
        )
    return count_parameters(detector)


def unused_strategy_keys(strategy: StrategyConfig) -> list[str]:
    """Keys set for a strategy other than the chosen one (kept so that ``--strategy`` can
    switch within one recipe), as ``strategy.<key>`` names."""
    owners = {"freeze_layers": "fine_tuning", "layer_decay": "fine_tuning",
              "cache_features": "feature_extractor"}
    return [f"strategy.{key}" for key, owner in owners.items()
            if getattr(strategy, key) not in (None, False, []) and strategy.name != owner]


def _feature_extractor(detector: Detector) -> None:
    head = detector.head_parameter_names()
    if not head:
        raise ConfigError(
            f"strategy feature_extractor: detector {detector.config.name!r} names no head "
            "parameters to train"
        )
    for name, param in detector.named_parameters():
        param.requires_grad_(name in head)
    detector.frozen_children = tuple(
        name for name, child in detector.named_children()
        if not any(f"{name}.{n}" in head for n, _ in child.named_parameters())
    )
    detector.train(detector.training)


def _freeze_layers(detector: Detector, prefixes: list[str]) -> None:
    names = [n for n, _ in detector.named_parameters()]

    def under(name: str, prefix: str) -> bool:
        # Whole dotted parts only: 'blocks.1' must not catch 'blocks.10'.
        return name == prefix or name.startswith(prefix + ".")

    resolved = []
    for given in prefixes:
        prefix = given.rstrip(".")
        for candidate in (prefix, f"backbone.{prefix}"):
            if any(under(n, candidate) for n in names):
                resolved.append(candidate)
                break
        else:
            raise ConfigError(
                f"strategy.freeze_layers: {given!r} matches no parameter of detector "
                f"{detector.config.name!r}. Valid prefixes include: "
                f"{', '.join(_example_prefixes(names, f'backbone.{prefix}'))}"
            )
    for name, param in detector.named_parameters():
        if any(under(name, p) for p in resolved):
            param.requires_grad_(False)


# -- LoRA -----------------------------------------------------------------------------------------


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules), bias=settings.bias,
    )


def has_lora(detector: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(getattr(detector, "backbone", None), PeftModel)


def apply_lora(detector: Detector, settings: LoraSettings) -> None:
    """Wrap ``detector.backbone`` with LoRA adapters; everything but adapters and head freezes."""
    from peft import get_peft_model

    if has_lora(detector):
        raise ConfigError("the detector already carries LoRA adapters")
    head = detector.head_parameter_names()
    try:
        detector.backbone = get_peft_model(detector.backbone, lora_config(settings))
    except ValueError as exc:  # peft: no match, or an unsupported layer type
        linear = sorted({
            n.rsplit(".", 1)[-1] for n, m in detector.backbone.named_modules()
            if isinstance(m, nn.Linear)
        })
        raise ConfigError(
            f"strategy.lora.target_modules {settings.target_modules}: {exc} Linear layer names "
            f"of detector {detector.config.name!r}: {', '.join(linear[:12]) or 'none'}"
        ) from None
    for name, param in detector.named_parameters():
        if not name.startswith("backbone."):
            param.requires_grad_(name in head)
    detector.lora_settings = settings


def merge_lora(detector: Detector) -> bool:
    """Fold the adapters into the backbone's layers (plain keys again); False if there were none."""
    if not has_lora(detector):
        return False
    detector.backbone = detector.backbone.merge_and_unload()
    detector.__dict__.pop("lora_settings", None)
    return True


def lora_meta(detector: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records so that its LoRA keys can be loaded again."""
    settings = getattr(detector, "lora_settings", None) if has_lora(detector) else None
    return settings.model_dump(mode="json") if settings is not None else None


def save_adapter(detector: Detector, folder: str | Path, meta: CheckpointMeta) -> Path:
    """The adapters alone, in peft's folder format, plus the head and this tool's meta.

    The folder loads with :func:`load_adapter` (or peft's ``PeftModel.from_pretrained`` on the
    bare backbone); it is a few MB against the backbone's hundreds.
    """
    from safetensors.torch import save_file

    if not has_lora(detector):
        raise ConfigError("save_adapter: the detector has no LoRA adapters")
    folder = Path(folder)
    detector.backbone.save_pretrained(str(folder))
    head = {
        n: p.detach().cpu().contiguous() for n, p in detector.state_dict().items()
        if not n.startswith("backbone.")
    }
    with atomic_target(folder / HEAD_FILE) as tmp:
        save_file(head, str(tmp))
    atomic_write(folder / ADAPTER_META, json.dumps(meta.to_json(), indent=2, default=str))
    for written in folder.iterdir():  # peft's own files too
        if written.is_file():
            follow_umask(written)
    return folder


def is_adapter_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_META).is_file() and (path / HEAD_FILE).is_file()


def load_adapter(
    folder: str | Path, base_weights: str | Path | None = None, merge: bool = True
) -> Detector:
    """Rebuild a detector from a :func:`save_adapter` folder: the base from the recorded model
    config (its ``pretrained`` / ``weights`` files, or ``base_weights``), then adapters and head.

    The older API's form: the module carries ``threshold`` and ``checkpoint_meta``;
    :func:`read_adapter` gives the module and its meta side by side.
    """
    detector, meta = read_adapter(folder, base_weights, merge)
    detector.threshold = meta.threshold
    detector.checkpoint_meta = meta
    return detector


def read_adapter(
    folder: str | Path, base_weights: str | Path | None = None, merge: bool = True
) -> tuple[Detector, CheckpointMeta]:
    """The detector of a :func:`save_adapter` folder (eval mode, nothing attached) and its
    meta, which describes the detector as rebuilt (merged unless ``merge`` is False)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from deepfake_detect.models.registry import build_detector, validate_model_config

    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise CheckpointError(
            f"{folder}: not an adapter folder of this tool (needs {ADAPTER_META} and {HEAD_FILE} "
            "beside peft's adapter files)"
        )
    meta = json.loads((folder / ADAPTER_META).read_text("utf-8"))
    model_cfg = dict(meta["model"])
    if base_weights is not None:
        model_cfg.update({"weights": str(base_weights), "pretrained": None})
    cfg = validate_model_config(model_cfg, source=str(folder / ADAPTER_META))
    base = cfg.weights or cfg.pretrained
    if base is None:
        raise CheckpointError(
            f"{folder}: the adapters were trained on a backbone that no file records (no "
            "model.pretrained or model.weights); pass the base weights explicitly"
        )
    if not Path(base).exists():
        raise CheckpointError(
            f"{folder}: the base weights {base} recorded with the adapters are not there; pass "
            "their current location as base_weights"
        )
    detector = build_detector(cfg)
    apply_lora(detector, LoraSettings.model_validate(meta["lora"]))
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(detector.backbone, adapter)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{folder}: adapter keys do not fit: {result.unexpected_keys[:5]}")
    head = load_file(str(folder / HEAD_FILE))
    missing, unexpected = detector.load_state_dict(head, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: {HEAD_FILE} does not fit the detector (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})"
        )
    if merge:
        merge_lora(detector)
    typed = CheckpointMeta.read(meta, str(folder / ADAPTER_META))
    typed = typed.model_copy(update={"model": detector.config.model_dump(mode="json")})
    return detector.eval(), typed
