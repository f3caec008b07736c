"""Optimizer parameter groups, optimizers and learning-rate schedules from ``train`` config.

Parameter groups
    Only trainable parameters (``requires_grad``) are optimised. They are split into a backbone
    group (``backbone_lr``, default ``lr``) and a head group (``head_lr``, default ``lr``) by
    :meth:`Detector.head_parameter_names`. When ``weight_decay > 0`` each is split again: biases
    and other 1-D parameters (norm scales and shifts, layer-scale gammas) and whatever a submodule
    lists in a timm-style ``no_weight_decay()`` (position embeddings, class tokens) get no weight
    decay, as is standard practice: decaying them shrinks normalisation statistics and offsets
    without curbing model capacity. Group names: ``backbone``, ``backbone_no_decay``, ``head``,
    ``head_no_decay``; empty groups are dropped.

    With ``layer_decay`` (the ``fine_tuning`` strategy's ``strategy.layer_decay``) the backbone
    groups are split per layer as well: a parameter at depth ``i`` of ``L``
    (:meth:`Detector.layer_ids`) trains at ``backbone_lr * layer_decay ** (L - i)`` and the group
    is named ``backbone.layer{i}`` (``_no_decay`` appended as above). The head keeps ``head_lr``.

    ``backbone_lr: 0`` with a trainable backbone is a config error rather than a silently excluded
    group: ``model.freeze.backbone: true`` is what freezes a backbone properly (no gradients are
    computed or stored, and its norm layers stay in eval mode).

Schedules
    :func:`build_scheduler` returns a Lightning ``lr_scheduler`` config dict. ``steps_per_epoch``
    counts optimizer steps, so it already accounts for gradient accumulation.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR

from deepfake_detect.config.schema import OptimizerConfig, SchedulerConfig
from deepfake_detect.errors import ConfigError


def _no_decay_names(model: nn.Module) -> list[str]:
    """Name patterns (fnmatch) of parameters that submodules exempt from weight decay."""
    patterns: list[str] = []
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if not callable(listed):
            continue
        for name in listed():
            patterns.append(f"{prefix}.{name}" if prefix else name)
    return patterns


def param_groups(
    model: nn.Module, cfg: OptimizerConfig, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for a detector; see the module docstring for the rules.

    Each group has ``name``, ``params``, ``lr`` and ``weight_decay``.
    """
    head_names = model.head_parameter_names() if hasattr(model, "head_parameter_names") else set()
    lrs = {
        "backbone": cfg.lr if cfg.backbone_lr is None else cfg.backbone_lr,
        "head": cfg.lr if cfg.head_lr is None else cfg.head_lr,
    }
    split_decay = cfg.weight_decay > 0
    no_decay = _no_decay_names(model) if split_decay else []
    layers = _layer_scales(model, layer_decay) if layer_decay is not None else {}

    buckets: dict[str, list[nn.Parameter]] = {}
    scales: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name in head_names else "backbone"
        if part == "backbone" and layers:
            layer, scale = layers.get(name, layers[""])
            part = f"backbone.layer{layer}"
            scales[part] = scale
        exempt = split_decay and (
            param.ndim <= 1
            or name.endswith(".bias")
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in no_decay)
        )
        buckets.setdefault(f"{part}_no_decay" if exempt else part, []).append(param)

    if not buckets:
        raise ConfigError(
            "every model parameter is frozen, so there is nothing to train: check model.freeze "
            "(backbone: true also needs a trainable head)"
        )
    backbone = [p for k, ps in buckets.items() if k.startswith("backbone") for p in ps]
    if lrs["backbone"] == 0 and backbone:
        count = sum(p.numel() for p in backbone)
        raise ConfigError(
            f"train.optimizer.backbone_lr is 0 but {count} backbone parameters are trainable: "
            "set model.freeze.backbone: true to freeze the backbone (no gradients, norm layers "
            "kept in eval mode), or give backbone_lr a value above 0"
        )

    def order(name: str) -> tuple:
        part = name.removesuffix("_no_decay")
        layer = int(part.rsplit("layer", 1)[1]) if ".layer" in part else -1
        return (part.startswith("head"), layer, name.endswith("_no_decay"))

    groups = []
    for name in sorted(buckets, key=order):
        part = name.removesuffix("_no_decay")
        base = "head" if part == "head" else "backbone"
        decay = 0.0 if name.endswith("_no_decay") else cfg.weight_decay
        groups.append({
            "name": name, "params": buckets[name], "lr": lrs[base] * scales.get(part, 1.0),
            "weight_decay": decay,
        })
    return groups


def _layer_scales(model: nn.Module, decay: float) -> dict[str, tuple[int, float]]:
    """Parameter name -> (layer, lr scale); key ``""`` holds the top layer for unlisted names."""
    ids = model.layer_ids() if hasattr(model, "layer_ids") else {}
    if not ids:
        raise ConfigError(
            "strategy.layer_decay needs the depth of each backbone layer, which this detector "
            f"does not give ({getattr(getattr(model, 'config', None), 'name', type(model).__name__)!r}); "
            "use a transformer backbone (ViT, Swin, CLIP) or drop layer_decay"
        )
    top = max(ids.values())
    out = {name: (layer, decay ** (top - layer)) for name, layer in ids.items()}
    out[""] = (top, 1.0)
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, layer_decay: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer named by ``train.optimizer`` over :func:`param_groups` of ``model``."""
    groups = param_groups(model, cfg, layer_decay)
    if cfg.name == "sgd":
        if cfg.nesterov and cfg.momentum == 0:
            raise ConfigError(
                "train.optimizer.nesterov needs momentum above 0: set "
                "train.optimizer.momentum (e.g. 0.9) or nesterov: false"
            )
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.name)
    if kind is None:
        raise ConfigError(f"train.optimizer.name {cfg.name!r} is not one of adam, adamw, sgd")
    return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine to ``floor``.

    A callable object (not a function) so that ``LambdaLR.state_dict`` stores its plain-number
    attributes, which ``torch.load(weights_only=True)`` accepts. Step ``s`` (0-based) warms up as
    ``(s + 1) / (warmup_steps + 1)``, reaching 1 at ``s = warmup_steps``; the multiplier is
    ``floor`` from ``s = total_steps`` on.
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: SchedulerConfig,
    epochs: int,
    steps_per_epoch: int,
    monitor: str,
    mode: Literal["min", "max"],
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` config dict for ``train.scheduler``, or ``None`` for none.

    - ``cosine``: per optimizer step; linear warm-up over ``warmup_epochs * steps_per_epoch``
      steps to each group's lr, then cosine down to ``min_lr`` (capped at the group's lr) at
      ``epochs * steps_per_epoch`` steps, where it stays.
    - ``plateau``: ``ReduceLROnPlateau`` on ``monitor`` per epoch, floored at ``min_lr``.
    - ``onecycle``: per step, peaking at each group's lr after ``pct_start`` of
      ``epochs * steps_per_epoch`` steps (more steps than that make torch raise). Momentum is not
      cycled: the configured momentum / betas stay in force.
    - ``step``: ``StepLR`` per epoch, lr times ``gamma`` every ``step_size`` epochs.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs ({epochs}) and steps_per_epoch ({steps_per_epoch}) must be >= 1")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if cfg.warmup_epochs > 0 and cfg.name != "cosine":
        raise ConfigError(
            f"train.scheduler.warmup_epochs only applies to the cosine scheduler, not "
            f"{cfg.name!r}: set it to 0 or use name: cosine (onecycle warms up by pct_start)"
        )
    total_steps = epochs * steps_per_epoch

    if cfg.name == "none":
        return None
    if cfg.name == "cosine":
        if cfg.warmup_epochs >= epochs:
            raise ConfigError(
                f"train.scheduler.warmup_epochs ({cfg.warmup_epochs}) must be below "
                f"train.epochs ({epochs})"
            )
        warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs else 0
        warmup = min(warmup, total_steps - 1)
        lambdas = [
            WarmupCosine(warmup, total_steps, min(1.0, cfg.min_lr / g["lr"]) if g["lr"] else 0.0)
            for g in optimizer.param_groups
        ]
        return {"scheduler": LambdaLR(optimizer, lambdas), "interval": "step", "frequency": 1}
    if cfg.name == "plateau":
        scheduler = ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
        )
        return {
            "scheduler": scheduler,
            "interval": "epoch",
            "frequency": 1,
            "monitor": monitor,
            "strict": True,
        }
    if cfg.name == "onecycle":
        scheduler = OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=cfg.pct_start,
            cycle_momentum=False,
        )
        return {"scheduler": scheduler, "interval": "step", "frequency": 1}
    if cfg.name == "step":
        scheduler = StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        return {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
    raise ConfigError(
        f"train.scheduler.name {cfg.name!r} is not one of none, cosine, plateau, onecycle, step"
    )
