"""Parameter groups for FD-aware optimizers, from a patched model's factor pairs."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..patch import fnl_factor_pairs

__all__ = ["fnl_param_groups", "default_no_decay"]


def default_no_decay(model: nn.Module) -> set[str]:
    """Names of parameters that take no decay: biases and normalization weights (as Trainer does)."""
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [nn.LayerNorm], patterns))
    return {n for n, _ in model.named_parameters() if n not in decay}


def fnl_param_groups(model: nn.Module, weight_decay: float, fd_coef: float | None = None,
                     fd_targets: Iterable[str] = ("ov",), no_decay: set[str] | None = None,
                     fd_mode: str = "decoupled") -> list[dict]:
    """Three groups: the factor tensors (U, V and an inner M) of the `fd_targets` forms (with `fd_pairs`, FD coefficient
    `fd_coef`, default `weight_decay`: the paper's no-new-tuning rule), the other decayed tensors
    (`weight_decay`), and biases/norms (no decay). Empty groups are left out.

    A factor tensor's blocks outside any FD pair (e.g. the query/key part of GPT-2's fused c_attn
    when only OV is targeted) keep ordinary weight decay.

    fd_mode="coupled" (SGD/NAG, FD added to the loss with `regularize.fd_penalty`): the factor group
    has neither weight decay nor `fd_pairs`, so that plain torch optimizers take it.
    """
    if fd_mode not in ("decoupled", "coupled"):
        raise ValueError(f"fd_mode must be 'decoupled' or 'coupled', got {fd_mode!r}")
    fd_coef = weight_decay if fd_coef is None else fd_coef
    no_decay = default_no_decay(model) if no_decay is None else no_decay
    pairs = fnl_factor_pairs(model, forms=tuple(fd_targets))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    factor_ids = {id(t) for pair in pairs for t in (pair.a.weight, pair.b.weight, pair.middle) if t is not None}
    fd_params = [p for _, p in named if id(p) in factor_ids]
    position = {id(p): i for i, p in enumerate(fd_params)}
    fd_pairs = [
        (position[id(pair.a.weight)], tuple(pair.a.layout), position[id(pair.b.weight)], tuple(pair.b.layout),
         position[id(pair.middle)] if pair.middle is not None else -1)
        for pair in pairs
        if id(pair.a.weight) in position and id(pair.b.weight) in position
        and (pair.middle is None or id(pair.middle) in position)
    ]
    groups = [
        {"params": fd_params, "weight_decay": weight_decay, "fd_coef": fd_coef, "fd_pairs": fd_pairs},
        {"params": [p for n, p in named if id(p) not in factor_ids and n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if id(p) not in factor_ids and n in no_decay], "weight_decay": 0.0},
    ]
    if fd_mode == "coupled":
        groups[0] = {"params": fd_params, "weight_decay": 0.0}
    return [g for g in groups if g["params"]]
