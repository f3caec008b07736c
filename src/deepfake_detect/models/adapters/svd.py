"""SVD residual adapters: a linear layer split into a frozen principal part and a trainable residual.

A weight ``W = U S Vh`` (thin SVD, ``n = min(out, in)`` components) keeps its top ``n - k``
components frozen as ``weight_main`` and trains the remaining ``k`` as ``U_residual`` (out x k),
``S_residual`` (k) and ``V_residual`` (k x in), the layout of the Effort release (FACTS.md).

The forward pass never forms the dense ``U_residual diag(S_residual) V_residual`` product: it
applies the residual as ``((x V_residual^T) * S_residual) U_residual^T``. That costs
``tokens x (in + out) x k`` instead of an ``out x in`` matrix per step, and it spares backward
the dense weight-gradient GEMM that a summed weight would need (``weight_main`` is frozen, so only
the input gradient flows through it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deepfake_detect.errors import ConfigError

RESIDUAL_KEYS = ("U_residual", "S_residual", "V_residual")


def merge_factors(
    weight_main: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``weight_main + u diag(s) v``, summed in float64 and returned in ``weight_main``'s dtype."""
    w = weight_main.double() + (u.double() * s.double()) @ v.double()
    return w.to(weight_main.dtype)


class SVDResidualLinear(nn.Module):
    """``y = x (weight_main + U_residual diag(S_residual) V_residual)^T + bias``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ConfigError(
                f"residual rank {rank} must be between 1 and min(in, out) = "
                f"{min(in_features, out_features)}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw = {"device": device, "dtype": dtype}
        self.weight_main = nn.Parameter(torch.empty(out_features, in_features, **kw), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None
        self.U_residual = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.S_residual = nn.Parameter(torch.empty(rank, **kw))
        self.V_residual = nn.Parameter(torch.empty(rank, in_features, **kw))
        # Reference quantities for the regularisers, made on first use and never saved, so the
        # state dict stays the release layout.
        self.register_buffer("_reference_norm", None, persistent=False)
        self._principal: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.linear(x, self.weight_main, self.bias)
        low = F.linear(x, self.V_residual) * self.S_residual
        return main + F.linear(low, self.U_residual)

    def merged_weight(self) -> torch.Tensor:
        """The full weight ``weight_main + U diag(S) V``."""
        return merge_factors(self.weight_main, self.U_residual, self.S_residual, self.V_residual)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        svd_dtype: torch.dtype = torch.float64,
        svd_device: torch.device | str | None = None,
    ) -> "SVDResidualLinear":
        """Decompose a trained ``nn.Linear``: its smallest ``rank`` components become the residual."""
        weight = linear.weight.detach()
        module = cls(
            linear.in_features, linear.out_features, rank, linear.bias is not None,
            device=weight.device, dtype=weight.dtype,
        )
        w = weight.to(device=svd_device or weight.device, dtype=svd_dtype)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u_res, s_res, v_res = u[:, -rank:], s[-rank:], vh[-rank:]
        # W minus the residual equals U_r diag(S_r) Vh_r up to rounding, without a rank-r GEMM.
        main = w - (u_res * s_res) @ v_res
        with torch.no_grad():
            module.weight_main.copy_(main.to(weight))
            module.U_residual.copy_(u_res.to(weight))
            module.S_residual.copy_(s_res.to(weight))
            module.V_residual.copy_(v_res.to(weight))
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach())
        return module

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (for evaluation and export)."""
        w = self.weight_main
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.requires_grad_(False)
        return linear

    # -- regularisers (Effort paper; off by default) ---------------------------------------------

    def _principal_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen ``U_r``, ``V_r`` and a constant of the orthogonality loss, computed once.

        Released checkpoints do not hold ``U_r`` and ``V_r``; they are the SVD of
        ``weight_main`` (rank ``n - k``), made on the first regularised step.
        """
        if self._principal is None:
            r = min(self.in_features, self.out_features) - self.rank
            w = self.weight_main.detach().double()
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            u_r, v_r = u[:, :r], vh[:r]
            const = {}
            for name, m in (("u", u_r), ("v", v_r)):
                gram = m.T @ m if name == "u" else m @ m.T  # the r x r Gram of the principal part
                dim = m.shape[0] if name == "u" else m.shape[0] + self.rank
                const[name] = (gram.square().sum() - 2 * m.square().sum() + dim).float()
            self._principal = (u_r.float(), v_r.float(), torch.stack([const["u"], const["v"]]))
        return self._principal

    def orthogonality_loss(self) -> torch.Tensor:
        """``0.5 ||U U^T - I||_F + 0.5 ||V V^T - I||_F`` with ``U = [U_r, U_res]``, ``V = [V_r; V_res]``.

        Computed through Gram matrices: ``||A A^T - I||_F^2 = ||A^T A||_F^2 - 2 ||A||_F^2 + d``
        and the frozen ``U_r`` blocks are constants, so a step costs ``O(out x r x k)``, not an
        ``out x out`` product.
        """
        u_r, v_r, const = self._principal_factors()
        u_r, v_r, const = u_r.to(self.U_residual), v_r.to(self.V_residual), const.to(self.U_residual)
        u, v = self.U_residual, self.V_residual
        # ||[A, B]^T [A, B]||^2 = ||A^T A||^2 + 2 ||A^T B||^2 + ||B^T B||^2
        u_sq = const[0] + 2 * (u_r.T @ u).square().sum() + (u.T @ u).square().sum() - 2 * u.square().sum()
        # V rows: [V_r; V_res] (n x in); the Gram of interest is V V^T (n x n), identity of size n.
        v_sq = (
            const[1] + 2 * (v_r @ v.T).square().sum() + (v @ v.T).square().sum()
            - 2 * v.square().sum()
        )
        return 0.5 * u_sq.clamp_min(0).sqrt() + 0.5 * v_sq.clamp_min(0).sqrt()

    def keep_sv_loss(self) -> torch.Tensor:
        """``| ||W||_F^2 - ||W_start||_F^2 |``: keeps the weight's energy where training began.

        ``||W_main + R||^2 = ||W_main||^2 + 2 <W_main, R> + ||R||^2`` with ``R = U diag(S) V``, and
        ``<W_main, R> = sum_j S_j u_j^T W_main v_j``, so no dense ``R`` is formed.
        """
        u, s, v = self.U_residual, self.S_residual, self.V_residual
        main_sq = self.weight_main.detach().float().square().sum()
        cross = (s * ((self.weight_main.to(u) @ v.T) * u).sum(0)).sum()
        res_sq = ((u.T @ u) * (v @ v.T) * torch.outer(s, s)).sum()
        current = main_sq + 2 * cross + res_sq
        if self._reference_norm is None:
            self._reference_norm = current.detach().clone()
        return (current - self._reference_norm).abs()


def match_linear_layers(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of ``nn.Linear`` submodules matching any fnmatch ``pattern`` (whole names)."""
    return [
        name for name, m in module.named_modules()
        if isinstance(m, (nn.Linear, SVDResidualLinear))
        and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


def check_patterns(module: nn.Module, patterns: Sequence[str], key: str) -> list[str]:
    """Matched layer names; a pattern matching nothing is a config error with examples."""
    if not patterns:
        raise ConfigError(f"{key}: give at least one layer name pattern")
    names = match_linear_layers(module, patterns)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            raise ConfigError(
                f"{key}: pattern {pattern!r} matches no linear layer. Linear layers are named "
                f"like: {', '.join(linears[:6])} (fnmatch patterns, e.g. "
                "'encoder.layers.*.self_attn.*_proj')"
            )
    return names


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def replace_with_svd_residual(
    module: nn.Module,
    names: Sequence[str],
    rank: int,
    decompose: bool = True,
    svd_dtype: torch.dtype = torch.float64,
    svd_device: torch.device | str | None = None,
    progress: bool = False,
) -> None:
    """Swap the named ``nn.Linear`` layers for :class:`SVDResidualLinear` in place.

    With ``decompose`` false the new layers are left uninitialised: for when a checkpoint that
    already holds the factors is loaded next (no SVD is computed).
    """
    items: Iterator[str] | Sequence[str] = names
    if progress and decompose and len(names) > 8:
        from rich.console import Console
        from rich.progress import track

        console = Console(stderr=True)
        items = track(names, description=f"SVD of {len(names)} layers", transient=True,
                      console=console, disable=not console.is_terminal)
    for name in items:
        linear = module.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            continue
        if decompose:
            new = SVDResidualLinear.from_linear(linear, rank, svd_dtype, svd_device)
        else:
            w = linear.weight
            new = SVDResidualLinear(linear.in_features, linear.out_features, rank,
                                    linear.bias is not None, device=w.device, dtype=w.dtype)
        _set_submodule(module, name, new)


def merge_svd_residual(module: nn.Module) -> int:
    """Replace every :class:`SVDResidualLinear` by its merged ``nn.Linear``; returns the count."""
    names = [n for n, m in module.named_modules() if isinstance(m, SVDResidualLinear)]
    for name in names:
        _set_submodule(module, name, module.get_submodule(name).to_linear())
    return len(names)


def svd_residual_layers(module: nn.Module) -> list[SVDResidualLinear]:
    return [m for m in module.modules() if isinstance(m, SVDResidualLinear)]
