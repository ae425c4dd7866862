"""Replace Linear / GPT-2 Conv1D / Conv2d layers of any nn.Module by factorized ones.

Ranks: an int is absolute; a float is the paper's rank scale: rank_scale · min(m, n) for a linear
layer (a fraction of its full rank) and rank_scale · c_out · k for a k×k convolution (the paper's
convention). A scale above 1 (or an int above the full rank) gives an overcomplete layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .config import check_layer_rank, matches_targets
from .layers import FactorizedConv2d, FactorizedLayer, FactorizedLinear
from .standalone import _set

__all__ = ["fnl_factorize_layers", "layer_rank", "factorized_params", "rank_scale_for_budget"]

DENSE_TYPES = (nn.Linear, Conv1D, nn.Conv2d)


def _dims(layer: nn.Module) -> tuple[str, int, int, int]:
    """(kind, m_out, m_in, k): the factorized matrix is m_out × m_in; k is the kernel size (1 for linear)."""
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0]
        return "conv2d", layer.out_channels * k, layer.in_channels * k, k
    out_features, in_features = (layer.weight.shape[1], layer.weight.shape[0]) if isinstance(layer, Conv1D) else layer.weight.shape
    return "linear", out_features, in_features, 1


def layer_rank(layer: nn.Module, rank: int | float) -> int:
    """The rank a dense layer gets: absolute int, or rank scale (min(m, n) for linear, c_out·k for conv)."""
    check_layer_rank(rank, "a layer rank")
    if isinstance(rank, int):
        return rank
    kind, m_out, m_in, k = _dims(layer)
    full = layer.out_channels * k if kind == "conv2d" else min(m_out, m_in)
    return max(1, math.floor(rank * full + 0.5))


def factorized_params(layer: nn.Module, rank: int, inner: bool) -> int:
    """Closed-form parameter count of the factorized replacement of `layer`."""
    _, m_out, m_in, _ = _dims(layer)
    return rank * (m_out + m_in) + (rank * rank if inner else 0) + (layer.bias.numel() if layer.bias is not None else 0)


def _spec_entry(layer: FactorizedLayer) -> dict:
    if isinstance(layer, FactorizedConv2d):
        shape = dict(kind="conv2d", in_channels=layer.in_channels, out_channels=layer.out_channels,
                     kernel_size=layer.kernel_size, stride=list(layer.stride), padding=list(layer.padding),
                     dilation=list(layer.dilation))
    else:
        shape = dict(kind="linear", in_features=layer.in_features, out_features=layer.out_features)
    return {**shape, "rank": layer.rank, "bias": layer.bias is not None, "inner": layer.m is not None,
            "si_error": layer.si_error, "params_before": layer.params_before}


def _targets_in(model: nn.Module, targets, exclude: set[str], types=DENSE_TYPES) -> list[tuple[str, nn.Module]]:
    """Layers of `types` matching `targets`, minus `exclude` and the projections of patched attention."""
    from .patch import patched_projection_names

    exclude = set(exclude) | patched_projection_names(model)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, types) and n not in exclude and matches_targets(targets, n)]


@torch.no_grad()
def fnl_factorize_layers(model: nn.Module, targets: str | list[str], rank: int | float, inner: bool = False,
                         init: str = "spectral", exclude: set[str] = frozenset(), progress: bool = True,
                         seed: int = 0) -> dict[str, dict]:
    """Replace every Linear/Conv1D/Conv2d whose name matches `targets` (a regex, full match, or a
    list of name suffixes) by a FactorizedLinear/FactorizedConv2d, in place. Projections of
    attention modules patched by fnl_patch are never taken.

    init="spectral": SI of the layer's current weight (pretrained, or its own random init: the
    paper's from-scratch SI); init="default": fresh factors at the dense layer's output scale.
    `inner` adds M = I (deep U M Vᵀ). Returns {name: spec entry} for config.fnl["layers"]."""
    found = _targets_in(model, targets, set(exclude))
    if not found:
        raise ValueError(f"no Linear/Conv1D/Conv2d layer matched {targets!r}")
    generator = torch.Generator().manual_seed(seed)
    entries = {}
    for name, layer in tqdm(found, desc="fnl_factorize", unit="layer", disable=not progress):
        r = layer_rank(layer, rank)
        cls = FactorizedConv2d if isinstance(layer, nn.Conv2d) else FactorizedLinear
        new = cls.from_dense(layer, r, inner=inner, init=init, generator=generator)
        _set(model, name, new)
        entries[name] = _spec_entry(new)
    return entries


def rank_scale_for_budget(model: nn.Module, targets: str | list[str], fraction: float, inner: bool = False,
                          exclude: set[str] = frozenset(), tol: float = 1e-4) -> float:
    """The rank scale at which factorizing `targets` leaves `fraction` of the model's parameters
    (bisection, as the paper's code did). Raises if the fraction is out of reach."""
    layers = _targets_in(model, targets, set(exclude))
    if not layers:
        raise ValueError(f"no Linear/Conv1D/Conv2d layer matched {targets!r}")
    total = sum(p.numel() for p in model.parameters())
    fixed = total - sum(p.numel() for _, layer in layers for p in layer.parameters())

    def kept(scale: float) -> float:
        return (fixed + sum(factorized_params(layer, layer_rank(layer, scale), inner) for _, layer in layers)) / total

    low, high = 1e-6, 1.0
    while kept(high) < fraction and high < 64:
        high *= 2
    if not kept(low) <= fraction <= kept(high):
        raise ValueError(f"a parameter fraction of {fraction} is out of reach: factorizing {len(layers)} layers gives "
                         f"{kept(low):.4f} at rank 1 and {kept(high):.4f} at rank scale {high}")
    while high - low > tol:
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) < fraction else (low, mid)
    return high
