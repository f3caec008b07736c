"""The interface every detector implements, and the model config fields every detector shares."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import nn

from deepfake_detect.config.schema import Strict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    Subclasses build ``self.backbone`` and ``self.head`` and implement :meth:`forward`. The
    preprocessing a detector expects travels with it (``input_size``, ``mean``, ``std``), so that
    checkpoints can be used for prediction without the training config at hand.
    """

    def __init__(self, config: ModelConfig, input_size: int, mean, std) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.fake_index = config.fake_index if config.num_classes > 1 else 0
        self.input_size = int(config.input_size or input_size)
        self.mean = tuple(float(m) for m in (config.mean or mean))
        self.std = tuple(float(s) for s in (config.std or std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fake_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """A single score per sample whose sigmoid is P(fake)."""
        if self.num_classes == 1:
            return logits[:, 0]
        return logits[:, self.fake_index] - logits[:, 1 - self.fake_index]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(fake) from logits, shape ``(B,)``."""
        if self.num_classes == 1:
            return torch.sigmoid(logits[:, 0].float())
        return torch.softmax(logits.float(), dim=1)[:, self.fake_index]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self(x))

    def head_parameter_names(self) -> set[str]:
        """Names of parameters that form the classifier head (for separate learning rates)."""
        return {f"head.{n}" for n, _ in self.head.named_parameters()} if hasattr(self, "head") else set()

    def adapt_state_dict(self, state_dict: dict) -> dict:
        """Map a foreign state dict (e.g. an official release) onto this detector's key names.

        Called by ``load_detector_weights`` after generic unwrapping; the default is identity.
        """
        return state_dict

    def preprocessing(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}
