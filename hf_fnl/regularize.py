"""Frobenius decay and norm diagnostics over a patched model's factor pairs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .factorize import frobenius_penalty, product_norms
from .patch import FactorPair

__all__ = ["fd_penalty", "form_norms"]


def fd_penalty(pairs: Iterable[FactorPair]) -> torch.Tensor:
    """Σ over pairs and heads of ½‖A_h B_hᵀ‖_F², in the Gram form; differentiable (coupled FD).

    Multiply by the FD coefficient and add it to the loss."""
    terms = [frobenius_penalty(p.a.view(), p.b.view(), stacked=True, M=p.middle) for p in pairs]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def form_norms(pairs: Iterable[FactorPair]) -> dict[str, float]:
    """Summed Frobenius and nuclear norms of the per-head (per-layer) products, per form: {"qk/frobenius": …}."""
    sums: dict[str, float] = {}
    for p in pairs:
        fro, nuc = product_norms(p.a.view(), p.b.view(), stacked=True, M=p.middle)
        for name, value in (("frobenius", fro), ("nuclear", nuc)):
            key = f"{p.form}/{name}"
            sums[key] = sums.get(key, 0.0) + float(value.sum())
    return sums
