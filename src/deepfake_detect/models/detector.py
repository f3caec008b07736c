"""The interface every detector implements, and the model config fields every detector shares."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExplainTarget:
    """Where a detector's heatmaps are computed (:mod:`deepfake_detect.inference.explain`).

    ``layer``: the dotted name of a module of the detector (``named_modules``) whose output the
    CAM weighs. ``layout``: the shape of that output: ``nchw`` a CNN feature map; ``tokens``
    ``(B, prefix_tokens + h * w, C)``, a transformer's tokens, class (and register) tokens first,
    the patch tokens in row order on a ``grid`` of ``(h, w)`` (None: square); ``nhwc`` a map
    with the channels last (Swin). ``method``: the CAM method used unless one is asked for.
    """

    layer: str
    layout: Literal["nchw", "tokens", "nhwc"] = "nchw"
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    method: str = "gradcam"


def module_name(root: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``root`` (found by identity, so that wrappers which
    forward attribute access, like peft's, still give the real path)."""
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a module of {type(root).__name__}")


class FreezeConfig(Strict):
    backbone: bool = Field(False, description="freeze every backbone parameter")
    prefixes: list[str] = Field(
        default_factory=list,
        description="freeze parameters under these name prefixes (whole dotted parts), "
        "e.g. backbone.blocks.0",
    )
    norm_eval: bool = Field(
        True, description="keep norm layers of a fully frozen backbone in eval mode"
    )


class ModelConfig(Strict):
    """Keys shared by every detector; a detector's own config class adds its keys."""

    name: str = Field(description="registry name (`deepfake-detect models` lists them)")
    num_classes: int = Field(2, ge=1, le=2, description="2: softmax over real/fake; 1: sigmoid")
    fake_index: int = Field(1, ge=0, le=1, description="logit index of the fake class")
    input_size: int | None = Field(None, ge=16, description="null: the detector's default")
    mean: tuple[float, float, float] | None = Field(None, description="null: detector default")
    std: tuple[float, float, float] | None = Field(None, description="null: detector default")
    pretrained: Path | None = Field(
        None, description="local backbone weights (.pth, .pt, .bin, .safetensors)"
    )
    strip_prefix: list[str] = Field(
        default_factory=list, description="key prefixes removed from pretrained weights"
    )
    weights: Path | None = Field(
        None,
        description="whole-detector weights to start from (an official release the detector "
        "reads, or a checkpoint of this tool), loaded strictly after building",
    )
    allow_download: bool = Field(
        False, description="let timm download pretrained weights by name (needs network)"
    )
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)

    @model_validator(mode="after")
    def _fake_index_in_range(self) -> "ModelConfig":
        if self.fake_index >= self.num_classes and self.num_classes > 1:
            raise ValueError(f"fake_index {self.fake_index} needs num_classes > {self.fake_index}")
        if self.num_classes == 1:
            if self.fake_index != 0 and "fake_index" in self.model_fields_set:
                raise ValueError(
                    "with num_classes 1 the single logit is the fake logit; drop fake_index"
                )
            # Store the index actually used, so that a dumped config validates again.
            self.__dict__["fake_index"] = 0
        return self


class Detector(nn.Module):
    """A binary real/fake classifier over normalised ``(B, 3, H, W)`` float batches.

    Subclasses build ``self.backbone`` and ``self.head`` and implement :meth:`extract_features`
    (the pretrained part) and, when the head is more than ``self.head``, :meth:`classify`; the
    split lets the feature-extractor strategy cache features. The preprocessing a detector
    expects travels with it (``input_size``, ``mean``, ``std``), so that checkpoints can be used
    for prediction without the training config at hand.
    """

    # Children kept in eval mode while training (set by the feature_extractor strategy).
    frozen_children: tuple[str, ...] = ()
    # Temperature scaling (set by calibration, stored in the checkpoint meta): probabilities()
    # divides the logits by it. 1.0 leaves the scores exactly as the network gives them.
    temperature: float = 1.0
    # Noise samples per image for the marginalised training loss of a variance head
    # (deepfake_detect.training.losses.marginal_fake_logit); read only when predicts_variance.
    variance_samples: int = 16

    def __init__(self, config: ModelConfig, input_size: int, mean, std) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.fake_index = config.fake_index if config.num_classes > 1 else 0
        self.input_size = int(config.input_size or input_size)
        self.mean = tuple(float(m) for m in (config.mean or mean))
        self.std = tuple(float(s) for s in (config.std or std))
        self.temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.extract_features(x))

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The output of the pretrained part, input of :meth:`classify`."""
        raise NotImplementedError(f"detector {self.config.name!r} does not split off features")

    def splits_features(self) -> bool:
        """Whether :meth:`extract_features` is implemented (feature caching needs it)."""
        return type(self).extract_features is not Detector.extract_features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`extract_features` output: the part that trains as the head."""
        return self.head(features)

    @property
    def predicts_variance(self) -> bool:
        """Whether the detector has a variance head (``variance_head``, e.g. ``model.uncertainty``).

        Such a detector predicts, besides its logits, the log-variance of a Gaussian over its
        fake logit (heteroscedastic aleatoric uncertainty): see :meth:`classify_with_variance`.
        """
        return getattr(self, "variance_head", None) is not None

    def classify_with_variance(
        self, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`classify` plus the log-variance of the fake logit, shape ``(B,)``; None for
        detectors without a variance head. The logits are those :meth:`classify` gives."""
        return self.classify(features), None

    def forward_with_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, log_var)`` for an input batch; ``log_var`` None without a variance head.

        Detectors without one run their plain ``forward``, so their logits are unchanged.
        """
        if not self.predicts_variance:
            return self(x), None
        return self.classify_with_variance(self.extract_features(x))

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        if mode:
            for name in self.frozen_children:
                getattr(self, name).eval()
        return self

    def layer_ids(self) -> dict[str, int]:
        """Depth of each backbone parameter (0 = input side) for layer-wise lr decay.

        Default: timm's ``group_matcher`` of the backbone (ViT: patch/position embeddings 0,
        block i -> i + 1, final norms last). Parameters not listed count as the top layer.
        """
        backbone = getattr(self, "backbone", None)
        if backbone is None or not hasattr(backbone, "group_matcher"):
            return {}
        from timm.models import group_parameters

        layers = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        return {f"backbone.{name}": int(layer) for name, layer in layers.items()}

    def fake_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """A single score per sample whose sigmoid is P(fake)."""
        if self.num_classes == 1:
            return logits[:, 0]
        return logits[:, self.fake_index] - logits[:, 1 - self.fake_index]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(fake) from logits, shape ``(B,)``, after temperature scaling (``self.temperature``).

        For two logits softmax(l / T)[fake] = sigmoid((l_fake - l_real) / T), so one temperature
        fitted on :meth:`fake_logit` serves both head shapes.
        """
        if self.temperature != 1.0:  # skipped at 1.0 so uncalibrated scores stay bit-identical
            logits = logits.float() / self.temperature
        if self.num_classes == 1:
            return torch.sigmoid(logits[:, 0].float())
        return torch.softmax(logits.float(), dim=1)[:, self.fake_index]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self(x))

    def head_parameter_names(self) -> set[str]:
        """Names of parameters that form the classifier head (for separate learning rates)."""
        return {f"head.{n}" for n, _ in self.head.named_parameters()} if hasattr(self, "head") else set()

    def regularization_loss(self) -> torch.Tensor | None:
        """A loss term added to the training loss (e.g. Effort's orthogonality); None: none."""
        return None

    def for_inference(self) -> "Detector":
        """Turn into the fastest equivalent form for evaluation and export (e.g. merge adapters).

        Called on loaded checkpoints; the result need not be trainable as before.
        """
        return self.eval()

    def apply_freeze(self) -> None:
        """Apply ``model.freeze``: the whole backbone and/or parameters under name prefixes."""
        freeze = self.config.freeze
        if freeze.backbone and hasattr(self, "backbone"):
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if not freeze.prefixes:
            return
        names = [n for n, _ in self.named_parameters()]

        def hit(name: str, prefix: str) -> bool:
            # Whole name components only: 'backbone.blocks.1' must not catch 'backbone.blocks.10'.
            p = prefix.rstrip(".")
            return name == p or name.startswith(p + ".")

        for prefix in freeze.prefixes:
            if not any(hit(n, prefix) for n in names):
                raise ConfigError(
                    f"model.freeze.prefixes: {prefix!r} matches no parameter of detector "
                    f"{self.config.name!r}. Valid prefixes include: "
                    f"{', '.join(_example_prefixes(names, prefix))}"
                )
        for n, p in self.named_parameters():
            if any(hit(n, prefix) for prefix in freeze.prefixes):
                p.requires_grad_(False)

    def adapt_state_dict(self, state_dict: dict) -> dict:
        """Map a foreign state dict (e.g. an official release) onto this detector's key names.

        Called by ``load_detector_weights`` after generic unwrapping; the default is identity.
        """
        return state_dict

    def preprocessing(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}

    def explain_target(self) -> ExplainTarget | None:
        """The layer heatmaps of this detector are computed on (:class:`ExplainTarget`); None:
        it has none. Default: its last ``Conv2d`` (in definition order), for CNNs a detector
        family does not describe better; the built-in families override it."""
        convs = [name for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]
        return ExplainTarget(convs[-1]) if convs else None


def _example_prefixes(names: list[str], wanted: str, n: int = 8) -> list[str]:
    candidates: list[str] = []
    for name in names:
        parts = name.split(".")
        for depth in range(1, min(len(parts), 4)):
            candidates.append(".".join(parts[:depth]))
    unique = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(wanted.rstrip("."), unique, n=3, cutoff=0.5)
    shallow = [c for c in unique if c.count(".") <= 1]
    return list(dict.fromkeys([*close, *shallow]))[:n]
