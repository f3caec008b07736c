"""A detector made of any timm backbone, an optional attention block and a classifier head."""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any, Literal

import timm
import torch
from pydantic import Field, field_validator
from torch import nn

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.models.attention import CBAM, SqueezeExcite
from deepfake_detect.models.detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Detector,
    ExplainTarget,
    ModelConfig,
    module_name,
)
from deepfake_detect.models.heads import HeadConfig, build_head
from deepfake_detect.models.weights import load_backbone_weights

log = logging.getLogger(__name__)

# Soft bound of the predicted log-variance: |log_var| < 10, i.e. the variance of the fake logit
# stays within about [4.5e-5, 2.2e4], so exp() cannot overflow, even in half precision.
LOG_VAR_LIMIT = 10.0
# The variance head starts at a constant log-variance of -2 (variance 0.14, std 0.37): the
# marginalised loss then shrinks a logit by a factor of only about 1 / sqrt(1 + pi * 0.14 / 8)
# = 0.97, so the class head first trains almost as it would without the option, while the
# gradient reaching the log-variance (proportional to the variance) is far from negligible.
INITIAL_LOG_VAR = -2.0

# create_model arguments this detector sets itself, and the config key that controls each.
_RESERVED_KWARGS = {
    "pretrained": "model.pretrained / model.allow_download",
    "num_classes": "model.num_classes",
    "drop_rate": "model.drop_rate",
    "drop_path_rate": "model.drop_path_rate",
    "pretrained_cfg": "model.timm_name (with a tag, e.g. efficientnet_b0.ra_in1k)",
    "pretrained_cfg_overlay": "model.mean / model.std / model.input_size",
    "checkpoint_path": "model.pretrained",
    "cache_dir": "model.allow_download",
}


class UncertaintyConfig(Strict):
    """The optional variance head (predicted aleatoric uncertainty of the fake logit)."""

    enabled: bool = Field(
        False,
        description="add a variance head: a linear layer on the pooled features predicting the "
        "log-variance of the fake logit (heteroscedastic aleatoric uncertainty, Kendall & Gal "
        "2017); training marginalises the loss over that logit noise, prediction reports the "
        "variance per input",
    )
    samples: int = Field(
        16,
        ge=2,
        description="noise samples per training image for the marginalised loss (a Monte-Carlo "
        "estimate of P(fake) under the predicted logit distribution)",
    )


class TimmDetectorConfig(ModelConfig):
    """A timm backbone (`timm_name` overrides the detector's architecture), optional attention
    on its last CNN feature map, and a classifier head."""

    timm_name: str | None = Field(
        None, description="timm architecture overriding the detector's default, e.g. resnet50"
    )
    head: HeadConfig = Field(default_factory=HeadConfig)
    attention: Literal["none", "se", "cbam"] = Field(
        "none", description="attention on the last CNN feature map (CNN backbones only)"
    )
    attention_reduction: int = Field(16, ge=1, description="channel reduction inside attention")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout on the pooled features (timm)")
    drop_path_rate: float | None = Field(
        None, ge=0, lt=1, description="stochastic depth; null: timm's default for the model"
    )
    backbone_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra timm.create_model arguments, e.g. {depth: 2, embed_dim: 32}",
    )
    grad_checkpointing: bool = Field(False, description="trade compute for activation memory")
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)

    @field_validator("backbone_kwargs")
    @classmethod
    def _no_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in _RESERVED_KWARGS:
                raise ValueError(f"{key!r} is set by deepfake-detect; use {_RESERVED_KWARGS[key]}")
        return v


class TimmAnyConfig(TimmDetectorConfig):
    """Any timm architecture: `timm_name` is required."""

    timm_name: str = Field(..., description="any timm architecture name, e.g. convnext_tiny")


def _check_timm_name(name: str, key: str = "model.timm_name") -> None:
    # is_model also rejects 'hf-hub:' sources, which would fetch from the network.
    if timm.is_model(name):
        return
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"{key}: {name!r} is not a timm architecture.{hint} "
        "`python -c \"import timm; print(timm.list_models('*pattern*'))\"` lists names."
    )


def _fixed_input_size(name: str) -> bool:
    pcfg = timm.models.get_pretrained_cfg(name)
    return bool(pcfg is not None and pcfg.fixed_input_size)


def _default_input_size(backbone: nn.Module) -> int:
    patch_embed = getattr(backbone, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size:  # models built for one size (ViT, Swin) know it, also when set via kwargs
        return int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size)
    size = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    return int(size[-1])


def download_failed(name: str, exc: Exception, key: str = "model.pretrained") -> CheckpointError:
    """The error for ``model.allow_download`` when timm could not fetch ``name``'s weights."""
    return CheckpointError(
        f"model.allow_download: could not download pretrained weights for timm model {name!r} "
        f"({type(exc).__name__}: {exc}). Check the network, or download the file elsewhere and "
        f"set {key} to its local path."
    )


class TimmDetector(Detector):
    """``timm`` backbone -> (attention on the feature map) -> pooling -> head.

    With ``model.uncertainty.enabled`` a second head on the same pooled features,
    ``variance_head``, predicts the log-variance of the fake logit (see
    :meth:`classify_with_variance`); ``forward`` still returns the logits alone.
    ``weights_follow``: whole-detector weights are loaded right after building, so
    ``model.pretrained`` is not read and nothing is downloaded.
    """

    config: TimmDetectorConfig

    def __init__(
        self,
        config: TimmDetectorConfig,
        default_name: str | None = None,
        *,
        weights_follow: bool = False,
    ) -> None:
        name = config.timm_name or default_name
        if not name:
            raise ConfigError(f"model.timm_name is required for detector {config.name!r}")
        _check_timm_name(name)
        kwargs = dict(config.backbone_kwargs)
        fixed = _fixed_input_size(name)
        if fixed and config.input_size and "img_size" not in kwargs:
            kwargs["img_size"] = config.input_size
        backbone = self._create_backbone(name, config, kwargs, weights_follow)
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        super().__init__(
            config,
            _default_input_size(backbone),
            pcfg.get("mean") or IMAGENET_MEAN,
            pcfg.get("std") or IMAGENET_STD,
        )
        self.timm_name = name
        self.backbone = backbone
        self.feature_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.attention = self._build_attention(fixed) if config.attention != "none" else None
        self.head = build_head(config.head, self.feature_dim, config.num_classes)
        self.variance_head = self._build_variance_head() if config.uncertainty.enabled else None
        self.variance_samples = config.uncertainty.samples
        self.pretrained_report: dict[str, Any] | None = None
        if config.pretrained is not None and not weights_follow:
            self.pretrained_report = self.load_pretrained(config.pretrained)
        if config.grad_checkpointing:
            try:
                self.backbone.set_grad_checkpointing(True)
            except (AssertionError, NotImplementedError, AttributeError):
                raise ConfigError(
                    f"model.grad_checkpointing: timm model {name!r} does not support gradient "
                    "checkpointing; set it to false"
                ) from None
        self.apply_freeze()

    def load_pretrained(self, path) -> dict[str, Any]:
        """Load backbone weights from ``path`` (``model.pretrained``); returns a report."""
        pcfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        classifier = pcfg.get("classifier") or ()
        return load_backbone_weights(
            self.backbone,
            path,
            self.config.strip_prefix,
            drop_prefixes=(classifier,) if isinstance(classifier, str) else classifier,
        )

    @staticmethod
    def _create_backbone(
        name: str, config: TimmDetectorConfig, kwargs: dict[str, Any], weights_follow: bool
    ) -> nn.Module:
        # Never reaches the network unless the user allowed it and gave no local weights, and
        # no detector weights follow (they would overwrite the downloaded ones).
        download = bool(config.allow_download and config.pretrained is None and not weights_follow)
        try:
            return timm.create_model(
                name,
                pretrained=download,
                num_classes=0,
                # None leaves timm's default and keeps models without the argument buildable.
                drop_rate=config.drop_rate or None,
                drop_path_rate=config.drop_path_rate,
                **kwargs,
            )
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(
                f"model.backbone_kwargs / drop_rate / drop_path_rate: timm model {name!r} cannot "
                f"be built with {kwargs or 'no extra arguments'}"
                f"{f', drop_rate={config.drop_rate}' if config.drop_rate else ''}"
                f"{f', drop_path_rate={config.drop_path_rate}' if config.drop_path_rate else ''}: "
                f"{exc}"
            ) from None
        except Exception as exc:
            if not download:
                raise
            raise download_failed(name, exc) from None

    def _build_attention(self, fixed: bool) -> nn.Module:
        cfg = self.config
        fmt = getattr(self.backbone, "output_fmt", "NCHW")
        fmt = getattr(fmt, "value", fmt)
        shape: tuple[int, ...] = ()
        if fmt == "NCHW" and not fixed:
            # The channel count of the last feature map is only known by running the backbone.
            size = min(self.input_size, 64)
            was_training = self.backbone.training
            self.backbone.eval()
            with torch.no_grad():
                shape = tuple(self.backbone.forward_features(torch.zeros(1, 3, size, size)).shape)
            self.backbone.train(was_training)
        if len(shape) != 4:
            raise ConfigError(
                f"model.attention: {cfg.attention!r} applies to CNN feature maps (N, C, H, W), but "
                f"timm model {self.timm_name!r} is a transformer producing token features; set "
                "model.attention: none or choose a CNN backbone"
            )
        channels = shape[1]
        if cfg.attention == "se":
            return SqueezeExcite(channels, cfg.attention_reduction)
        return CBAM(channels, cfg.attention_reduction)

    def _build_variance_head(self) -> nn.Linear:
        layer = nn.Linear(self.feature_dim, 1)
        # Zero weights: every input starts at the same log-variance, so no sample is marked
        # uncertain by chance before training; the weights' gradients are not zero (they scale
        # with the features), so it learns from the first step.
        nn.init.zeros_(layer.weight)
        # The inverse of the bound applied in classify_with_variance.
        nn.init.constant_(layer.bias, LOG_VAR_LIMIT * math.atanh(INITIAL_LOG_VAR / LOG_VAR_LIMIT))
        return layer

    def train(self, mode: bool = True) -> "TimmDetector":
        super().train(mode)
        freeze = self.config.freeze
        if mode and freeze.backbone and freeze.norm_eval:
            # Frozen statistics must not drift with the new data's batches.
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def head_parameter_names(self) -> set[str]:
        # The attention block is new, like the head, so it trains at the head's learning rate.
        names = super().head_parameter_names()
        if self.attention is not None:
            names |= {f"attention.{n}" for n, _ in self.attention.named_parameters()}
        if self.variance_head is not None:
            names |= {f"variance_head.{n}" for n, _ in self.variance_head.named_parameters()}
        return names

    def adapt_state_dict(self, state_dict: dict) -> dict:
        """Weights of a detector without a variance head (``model.weights`` of a model trained
        without ``model.uncertainty``) start this one's variance head from its initialisation."""
        if self.variance_head is None or any(k.startswith("variance_head.") for k in state_dict):
            return state_dict
        if not any(k.startswith("head.") for k in state_dict):
            return state_dict  # not a whole detector: let the strict load explain the mismatch
        log.warning(
            "the weights hold no variance head: model.uncertainty's head starts from its "
            "initialisation (constant variance %.2g) and means nothing until trained",
            math.exp(INITIAL_LOG_VAR),
        )
        fresh = {f"variance_head.{k}": v for k, v in self.variance_head.state_dict().items()}
        return {**state_dict, **fresh}

    # -- heatmaps ---------------------------------------------------------------------------------

    def explain_target(self) -> ExplainTarget:
        """Where heatmaps are computed, by the backbone's structure:

        - an attention head (``model.attention``): its output, the attended feature map that
          the head pools;
        - a ViT (``patch_embed`` + ``blocks``: timm ViTs, FSFM, DeiT, EVA...): the last block's
          ``norm1``, its tokens read as a patch grid (the tokens the last attention mixes; the
          class and register tokens dropped);
        - Swin (channels-last ``(B, H, W, C)`` maps): the last block's ``norm1``;
        - any other CNN: the module that produces the last feature map (ResNet ``layer4``,
          EfficientNet / MobileNet ``bn2`` after ``conv_head``, Xception ``act4``).
        """
        if self.attention is not None:
            return ExplainTarget(module_name(self, self.attention))
        backbone = self.backbone
        blocks = getattr(backbone, "blocks", None)
        if getattr(backbone, "patch_embed", None) is not None and isinstance(
            blocks, (nn.Sequential, nn.ModuleList)
        ) and len(blocks):
            layer = getattr(blocks[-1], "norm1", blocks[-1])
            grid = getattr(backbone.patch_embed, "grid_size", None)
            prefix = getattr(backbone, "num_prefix_tokens", None)
            if prefix is None:
                prefix = 0 if getattr(backbone, "cls_token", None) is None else 1
            return ExplainTarget(module_name(self, layer), "tokens", int(prefix),
                                 tuple(int(g) for g in grid) if grid is not None else None)
        fmt = getattr(backbone, "output_fmt", "NCHW")
        if getattr(fmt, "value", fmt) == "NHWC":
            stages = getattr(backbone, "layers", None)
            last = stages[-1] if stages is not None and len(stages) else None
            block = last.blocks[-1] if last is not None and hasattr(last, "blocks") else last
            if block is not None:
                return ExplainTarget(module_name(self, getattr(block, "norm1", block)), "nhwc")
        return self._final_map_target() or super().explain_target()

    def _final_map_target(self) -> ExplainTarget | None:
        """The module whose output is the backbone's last feature map, found by running the
        backbone once on a blank image: the last module to finish that returns the very tensor
        ``forward_features`` returns (so the outermost of several, e.g. ``layer4`` rather than
        its last block), else the last one returning a tensor of its shape."""
        finished: list[tuple[nn.Module, torch.Tensor]] = []

        def record(module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and not isinstance(module, nn.Identity):
                finished.append((module, output))

        backbone = self.backbone
        param = next(backbone.parameters())
        size = self.input_size if _fixed_input_size(self.timm_name) else min(self.input_size, 64)
        x = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
        handles = [m.register_forward_hook(record) for m in backbone.modules() if m is not backbone]
        # each module's own mode: a frozen backbone keeps its norm layers in eval while training
        modes = [(m, m.training) for m in backbone.modules()]
        try:
            backbone.eval()
            with torch.no_grad():
                out = backbone.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
            for m, mode in modes:
                m.training = mode
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        same = [m for m, o in finished if o is out] or [
            m for m, o in finished if o.shape == out.shape]
        return ExplainTarget(module_name(self, same[-1])) if same else None

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        if self.attention is None:
            return self.backbone.forward_head(feats, pre_logits=True)
        return feats  # the attention block trains with the head, so it sees the feature map

    def _pooled(self, features: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            features = self.backbone.forward_head(self.attention(features), pre_logits=True)
        return features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self._pooled(features))

    def classify_with_variance(
        self, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = self._pooled(features)  # the attention block runs once for both heads
        logits = self.head(pooled)
        if self.variance_head is None:
            return logits, None
        raw = self.variance_head(pooled)[:, 0]
        # A smooth bound rather than clamp(): a clamped value gets no gradient and could stay
        # stuck at the limit; near zero the bound is the identity.
        return logits, LOG_VAR_LIMIT * torch.tanh(raw / LOG_VAR_LIMIT)

