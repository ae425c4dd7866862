"""Rank-adaptive training of low-rank linear layers: dynamical low-rank training with the KLS
("unconventional") integrator and relative-threshold truncation (Schotthöfer et al., NeurIPS 2022).

A DLRTLinear holds W = U S Vᵀ with orthonormal U (m × r), V (n × r). One KLSIntegrator step, given
a closure that computes the loss and calls backward:
    K-step  K = U S,  K ← K − lr ∂L/∂K           (forward with W = K Vᵀ)
    L-step  L = V Sᵀ, L ← L − lr ∂L/∂L           (forward with W = U Lᵀ)
    augment Û = orth[K | U], V̂ = orth[L | V]; lift S̃ = Ûᵀ U S Vᵀ V̂   (rank up to 2r)
    S-step  S̃ ← S̃ − lr ∂L/∂S̃                   (forward with W = Û S̃ V̂ᵀ)
    truncate S̃ = P Σ Qᵀ to the smallest r' with ‖Σ[r':]‖ ≤ θ‖Σ‖; U ← Û P_r', V ← V̂ Q_r', S ← Σ_r'
so the rank grows (augmentation) and shrinks (truncation) as training needs. No m × n gradient is
ever formed. Parameter shapes change every step, so the integrator owns the update of U, S, V (plain
gradient steps, no per-parameter state to reshape); the layer's bias and every other parameter of
the model are stepped by an ordinary optimizer on the gradients of the S-step pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .factorize import compute_dtype
from .standalone import _set

__all__ = ["DLRTLinear", "KLSIntegrator", "fnl_dlrt_layers", "fnl_dlrt_to_factorized"]


class DLRTLinear(nn.Module):
    """weight: the dense matrix to start from (its rank-r truncated SVD); None: nn.Linear's default init."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None,
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dense = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.bias = dense.bias
        self.register_buffer("U", torch.empty(0))
        self.register_buffer("S", torch.empty(0))
        self.register_buffer("V", torch.empty(0))
        self.set_weight(dense.weight.detach() if weight is None else weight, rank)
        self._substep: tuple | None = None  # (kind, tensors) while an integrator step runs

    @classmethod
    def from_dense(cls, layer: nn.Linear, rank: int) -> DLRTLinear:
        new = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None,
                  device=layer.weight.device, dtype=layer.weight.dtype, weight=layer.weight.detach())
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.detach())
        return new

    @torch.no_grad()
    def set_weight(self, W: torch.Tensor, rank: int) -> None:
        """U S Vᵀ = the best rank-r approximation of W (orthonormal U, V; diagonal S)."""
        U, s, Vh = torch.linalg.svd(W.to(compute_dtype(W)), full_matrices=False)
        self.U, self.S, self.V = (t.to(W.dtype) for t in (U[:, :rank], torch.diag(s[:rank]), Vh[:rank].T))

    @property
    def rank(self) -> int:
        return self.S.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind, t = self._substep or ("W", None)
        if kind == "K":  # W = K Vᵀ
            return F.linear(F.linear(x, self.V.T), t, self.bias)
        if kind == "L":  # W = U Lᵀ
            return F.linear(F.linear(x, t.T), self.U, self.bias)
        if kind == "S":  # W = Û S̃ V̂ᵀ
            U_hat, S_tilde, V_hat = t
            return F.linear(F.linear(F.linear(x, V_hat.T), S_tilde), U_hat, self.bias)
        return F.linear(F.linear(F.linear(x, self.V.T), self.S), self.U, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _orth(M: torch.Tensor) -> torch.Tensor:
    Q, _ = torch.linalg.qr(M, mode="reduced")
    return Q


class KLSIntegrator:
    """Steps every DLRTLinear of `model` by the KLS integrator; `others` (any torch optimizer over the
    remaining parameters, biases included) steps on the S-step pass's gradients.

    theta: relative truncation threshold; min_rank/max_rank bound the adapted rank.
    `rank_history` holds one {layer name: rank} per step."""

    def __init__(self, model: nn.Module, lr: float, theta: float = 0.1, others: torch.optim.Optimizer | None = None,
                 min_rank: int = 1, max_rank: int | None = None):
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, DLRTLinear)}
        if not self.layers:
            raise ValueError("the model has no DLRTLinear layer")
        self.model, self.lr, self.theta, self.others = model, lr, theta, others
        self.min_rank, self.max_rank = min_rank, max_rank
        self.rank_history: list[dict[str, int]] = []

    def _pass(self, closure: Callable[[], torch.Tensor], kind: str, tensors: dict) -> torch.Tensor:
        for name, layer in self.layers.items():
            layer._substep = (kind, tensors[name])
        try:
            return closure()
        finally:
            for layer in self.layers.values():
                layer._substep = None

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`closure` zeroes gradients, computes the loss, calls backward and returns the loss."""
        lr = self.lr
        K = {n: (l.U @ l.S).requires_grad_() for n, l in self.layers.items()}
        self._pass(closure, "K", K)
        L = {n: (l.V @ l.S.T).requires_grad_() for n, l in self.layers.items()}
        self._pass(closure, "L", L)
        lifted = {}
        with torch.no_grad():
            for n, layer in self.layers.items():
                U_hat = _orth(torch.cat([K[n] - lr * K[n].grad, layer.U], dim=1))
                V_hat = _orth(torch.cat([L[n] - lr * L[n].grad, layer.V], dim=1))
                S_tilde = (U_hat.T @ layer.U) @ layer.S @ (layer.V.T @ V_hat)
                lifted[n] = (U_hat, S_tilde.requires_grad_(), V_hat)
        loss = self._pass(closure, "S", lifted)
        if self.others is not None:
            self.others.step()
        with torch.no_grad():
            ranks = {}
            for n, layer in self.layers.items():
                U_hat, S_tilde, V_hat = lifted[n]
                P, sigma, Qh = torch.linalg.svd(S_tilde - lr * S_tilde.grad)
                r = self._truncated_rank(sigma, max_allowed=min(layer.in_features, layer.out_features))
                layer.U, layer.V, layer.S = U_hat @ P[:, :r], V_hat @ Qh[:r].T, torch.diag(sigma[:r])
                ranks[n] = r
        self.rank_history.append(ranks)
        return loss.detach()

    def _truncated_rank(self, sigma: torch.Tensor, max_allowed: int) -> int:
        """Smallest r with ‖σ[r:]‖ ≤ θ‖σ‖, within [min_rank, max_rank]."""
        tail = sigma.flip(0).square().cumsum(0).flip(0).sqrt()  # tail[r] = ‖σ[r:]‖
        keep = int((tail > self.theta * sigma.norm()).sum())
        upper = min(max_allowed, self.max_rank or max_allowed, sigma.numel())
        return max(self.min_rank, min(keep, upper))


def fnl_dlrt_layers(model: nn.Module, targets: str | list[str], rank: int | float) -> list[str]:
    """Replace the nn.Linear layers whose names match `targets` (regex full match, or name
    suffixes; attention projections of a patched model excluded) by DLRTLinear at `rank` (int, or
    float scale of min(m, n)) by truncated SVD. Returns their names."""
    from .layer_patch import _targets_in, layer_rank

    found = _targets_in(model, targets, set(), types=(nn.Linear,))
    if not found:
        raise ValueError(f"no nn.Linear layer matched {targets!r}")
    for name, layer in found:
        _set(model, name, DLRTLinear.from_dense(layer, layer_rank(layer, rank)))
    return [n for n, _ in found]


@torch.no_grad()
def fnl_dlrt_to_factorized(model: nn.Module) -> dict[str, int]:
    """Freeze the adapted ranks: every DLRTLinear becomes the FactorizedLinear U Vᵀ of its current
    rank (U ← U S; exact), recorded in config.fnl["layers"], so that the rank-adapted model saves,
    reloads (hf_fnl.from_pretrained), merges (fnl_merge) and exports like any factorized model.
    Returns {layer name: rank}."""
    from .config import FNLConfig
    from .layer_patch import _spec_entry
    from .layers import FactorizedLinear
    from .patch import record_spec

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, DLRTLinear)]
    if not found:
        raise ValueError("the model has no DLRTLinear layer (fnl_dlrt_layers makes them)")
    params_before = sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for _, m in found)  # as if the DLRT layers were still dense
    entries = {}
    for name, layer in found:
        new = FactorizedLinear(layer.in_features, layer.out_features, layer.rank, bias=layer.bias is not None,
                               device=layer.U.device, dtype=layer.U.dtype)
        new.set_factors(layer.U @ layer.S, layer.V)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        new.params_before = layer.in_features * layer.out_features + (layer.bias.numel() if layer.bias is not None else 0)
        _set(model, name, new)
        entries[name] = _spec_entry(new)
    if hasattr(model, "config"):  # a transformers model: record the layers for save/reload
        ranks = [e["rank"] for e in entries.values()]
        record_spec(model, FNLConfig(forms=(), linear_targets=list(entries), linear_rank=max(ranks), progress=False),
                    params_before, {}, entries)  # linear_rank: the largest; each layer's own rank is in its entry
    return {n: e["rank"] for n, e in entries.items()}
