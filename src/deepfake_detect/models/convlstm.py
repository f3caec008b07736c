"""Convolutional LSTM (Shi et al., 2015): an LSTM whose state is a feature map.

A plain LSTM over pooled frame vectors loses *where* an artefact is; the ConvLSTM keeps the
spatial layout of the backbone's feature maps, so flicker or warping at one place of the face can
be followed from frame to frame. Gates, with ``*`` a convolution and ``o`` the element-wise
product::

    i = sigmoid(W_i * [x_t, h_{t-1}] + b_i)      input gate
    f = sigmoid(W_f * [x_t, h_{t-1}] + b_f)      forget gate
    o = sigmoid(W_o * [x_t, h_{t-1}] + b_o)      output gate
    g = tanh(W_g * [x_t, h_{t-1}] + b_g)         candidate
    c_t = f o c_{t-1} + i o g
    h_t = o o tanh(c_t)

Without peephole connections (as in Keras' ``ConvLSTM2D``); the state starts at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, hidden, H, W)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: a single convolution over ``[x, h]`` gives the four gates.

    The kernel is odd and padded to keep the spatial size, so that layers stack and the state
    lines up with the input at every step.
    """

    def __init__(
        self, input_channels: int, hidden_channels: int, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        if input_channels < 1 or hidden_channels < 1:
            raise ValueError(
                f"ConvLSTMCell needs positive channel counts, got input {input_channels}, "
                f"hidden {hidden_channels}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"ConvLSTMCell kernel_size must be odd (same padding keeps the map size), "
                f"got {kernel_size}"
            )
        self.input_channels = input_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        # Output channels in gate order i, f, o, g.
        self.gates = nn.Conv2d(
            input_channels + hidden_channels, 4 * hidden_channels, kernel_size,
            padding=kernel_size // 2, bias=bias,
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keras' ConvLSTM2D initialisation, which the seed's recipe was tuned with.

        Glorot-uniform input weights keep the gates' pre-activations on the scale of the input
        whatever the channel count (PyTorch's default shrinks them by ~1/sqrt(3) per layer);
        orthogonal recurrent weights neither blow up nor wash out the state over the steps.
        """
        n_in, n_h, k = self.input_channels, self.hidden_channels, self.kernel_size
        w_x = nn.init.xavier_uniform_(torch.empty(4 * n_h, n_in, k, k))
        w_h = nn.init.orthogonal_(torch.empty(4 * n_h, n_h, k, k))
        self.gates.weight.copy_(torch.cat([w_x, w_h], dim=1))
        if self.gates.bias is not None:
            # Forget-gate bias 1 (Jozefowicz et al., 2015; Keras' unit_forget_bias): early in
            # training the cell keeps its memory instead of halving it at every step.
            self.gates.bias.zero_()
            self.gates.bias[n_h : 2 * n_h].fill_(1.0)

    def init_state(self, x: torch.Tensor) -> State:
        """Zero ``(h, c)`` for an input step ``x`` of shape ``(B, C, H, W)``."""
        b, _, h, w = x.shape
        zeros = x.new_zeros(b, self.hidden_channels, h, w)
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        """One step: ``x`` ``(B, C_in, H, W)`` and the previous state -> the new ``(h, c)``."""
        if state is None:
            state = self.init_state(x)
        h, c = state
        return self._update(self.gates(torch.cat([x, h], dim=1)), c)

    # The two halves of the gate convolution, used by ConvLSTM to run the input half on all
    # steps at once (one large convolution instead of T small ones); the sum of both halves is
    # exactly the convolution over [x, h] because convolution is linear in its input channels.
    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """The gate pre-activations contributed by ``x`` (bias included), any batch size."""
        weight = self.gates.weight[:, : self.input_channels]
        return F.conv2d(x, weight, self.gates.bias, padding=self.kernel_size // 2)

    def step(self, x_gates: torch.Tensor, state: State) -> State:
        """One step from precomputed :meth:`input_gates` of ``x_t`` and the previous state."""
        h, c = state
        weight = self.gates.weight[:, self.input_channels :]
        return self._update(x_gates + F.conv2d(h, weight, padding=self.kernel_size // 2), c)

    def _update(self, pre: torch.Tensor, c: torch.Tensor) -> State:
        i, f, o, g = torch.split(pre, self.hidden_channels, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def extra_repr(self) -> str:
        return (f"input_channels={self.input_channels}, hidden_channels={self.hidden_channels}, "
                f"kernel_size={self.kernel_size}")


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM layers; layer ``k`` reads the hidden-state sequence of layer ``k - 1``.

    ``filters`` gives the hidden channels per layer (e.g. ``[256, 128]``). Input
    ``(B, T, C, H, W)``; output ``(outputs, last)``: the last layer's hidden state at every step
    ``(B, T, filters[-1], H, W)`` and at the final step ``(B, filters[-1], H, W)``.
    """

    def __init__(self, input_channels: int, filters: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        filters = [int(f) for f in filters]
        if not filters:
            raise ValueError("ConvLSTM needs at least one layer (filters is empty)")
        widths = [input_channels, *filters]
        self.cells = nn.ModuleList(
            ConvLSTMCell(a, b, kernel_size) for a, b in pairwise(widths)
        )
        self.filters = filters
        self.out_channels = filters[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"ConvLSTM expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        seq = x
        for cell in self.cells:
            # The input half of the gates does not depend on the state: one call for all steps.
            x_gates = cell.input_gates(seq.flatten(0, 1)).unflatten(0, (b, t))
            state = cell.init_state(seq[:, 0])
            hs = []
            for step in range(t):
                state = cell.step(x_gates[:, step], state)
                hs.append(state[0])
            seq = torch.stack(hs, dim=1)
        return seq, seq[:, -1]
