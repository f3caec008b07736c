"""Classifier heads placed on top of pooled backbone features."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from deepfake_detect.config.schema import Strict

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class HeadConfig(Strict):
    type: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one layer; mlp: hidden layers, then a linear layer"
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [512], description="widths of the MLP hidden layers"
    )
    batch_norm: bool = Field(False, description="BatchNorm1d after each hidden linear layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before each linear layer")
    residual: bool = Field(
        False, description="add a hidden layer's input to its output where the widths are equal"
    )
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="MLP activation")

    @model_validator(mode="after")
    def _mlp_needs_hidden(self) -> "HeadConfig":
        if self.type == "mlp" and not self.hidden:
            raise ValueError("an mlp head needs at least one hidden width (or use type: linear)")
        return self


def _init_linear(layer: nn.Linear) -> None:
    # Small weights keep the first logits near zero, so fine-tuning starts from calibrated 50/50.
    nn.init.trunc_normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_outputs)
        _init_linear(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


class _HiddenBlock(nn.Module):
    def __init__(
        self,
        in_f: int,
        out_f: int,
        batch_norm: bool,
        activation: str,
        dropout: float,
        residual: bool,
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The norm's shift makes a bias redundant.
        self.fc = nn.Linear(in_f, out_f, bias=not batch_norm)
        self.norm = nn.BatchNorm1d(out_f) if batch_norm else nn.Identity()
        self.act = _ACTIVATIONS[activation]()
        self.residual = residual and in_f == out_f
        _init_linear(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.fc(self.drop(x))))
        return x + y if self.residual else y


class MLPHead(nn.Module):
    def __init__(self, in_features: int, num_outputs: int, cfg: HeadConfig) -> None:
        super().__init__()
        widths = [in_features, *cfg.hidden]
        self.blocks = nn.Sequential(
            *(
                _HiddenBlock(a, b, cfg.batch_norm, cfg.activation, cfg.dropout, cfg.residual)
                for a, b in zip(widths[:-1], widths[1:])
            )
        )
        self.out = LinearHead(widths[-1], num_outputs, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x))


def build_head(cfg: HeadConfig, in_features: int, num_outputs: int) -> nn.Module:
    """A head mapping ``(B, in_features)`` to ``(B, num_outputs)`` logits."""
    if cfg.type == "linear":
        return LinearHead(in_features, num_outputs, cfg.dropout)
    return MLPHead(in_features, num_outputs, cfg)
