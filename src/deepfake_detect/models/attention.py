"""Attention blocks applied to CNN feature maps ``(N, C, H, W)``; each keeps the input shape.

Gates are ``2 * sigmoid(z)`` with the last layer of ``z`` zero-initialised, so a freshly added
block is an exact identity and does not disturb pretrained features at the start of fine-tuning;
it learns to scale features by a factor in ``(0, 2)``.
"""

from __future__ import annotations

import torch
from torch import nn


def _gate(z: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.sigmoid(z)


def _zero(layer: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _hidden(channels: int, reduction: int) -> int:
    return max(1, channels // max(1, reduction))


class SqueezeExcite(nn.Module):
    """Channel re-weighting from globally average-pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = _zero(nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * _gate(self.expand(self.act(self.reduce(s))))


class ChannelAttention(nn.Module):
    """CBAM's channel gate: one MLP shared by the average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            _zero(nn.Conv2d(hidden, channels, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return x * _gate(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """CBAM's spatial gate: a convolution over channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial_kernel must be odd to keep the map size, got {kernel_size}")
        self.conv = _zero(nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * _gate(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional block attention: channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
