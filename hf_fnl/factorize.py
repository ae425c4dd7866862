"""Pure tensor math for factorized layers: no nn.Module, no transformers.

Conventions: a factor pair (A, B) stands for the product W = A Bᵀ with A (…, m, r), B (…, n, r);
leading dimensions are batch dimensions (one per head or head group). Every function accepts
batched inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "ProductSVD",
    "compute_dtype",
    "augment_with_bias",
    "product_svd",
    "spectral_factors",
    "spectral_product_factors",
    "split_sqrt",
    "relative_tail_error",
]


class ProductSVD(NamedTuple):
    """Thin SVD of a product A Bᵀ = U diag(S) Vᵀ, singular values descending."""

    U: torch.Tensor  # (…, m, k)
    S: torch.Tensor  # (…, k)
    V: torch.Tensor  # (…, n, k)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """SVD/QR precision for weights of `dtype`: float64 for float32/float64, float32 for bf16/fp16.

    torch has no bf16 SVD and fp16 loses the small singular values that decide the rank. float32
    weights get float64 factorizations so that a full-rank patch reproduces the model to float32
    rounding (≤1e-5 on logits); the factors are cast back to the weights' dtype.
    """
    return torch.float64 if dtype in (torch.float64, torch.float32) else torch.float32


def _fix_signs(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip singular-vector pairs so that the largest-magnitude entry of each U column is positive.

    SVD signs depend on the LAPACK path; this makes the factors a deterministic function of W.
    """
    idx = U.abs().argmax(dim=-2, keepdim=True)
    signs = torch.gather(U, -2, idx).sign()
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs, V * signs


def product_svd(A: torch.Tensor, B: torch.Tensor) -> ProductSVD:
    """SVD of A Bᵀ through thin QRs, never forming the m×n product.

    A = Qa Ra, B = Qb Rb, so A Bᵀ = Qa (Ra Rbᵀ) Qbᵀ and the SVD of the small k×k core
    Ra Rbᵀ = P S Rᵀ gives U = Qa P, V = Qb R. Cost O((m + n) k²) per batch entry.
    Runs in `compute_dtype` of the inputs on their device; returns in that dtype.
    """
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(f"inner dimensions differ: A {tuple(A.shape)}, B {tuple(B.shape)}")
    dtype = compute_dtype(A.dtype)
    Qa, Ra = torch.linalg.qr(A.to(dtype), mode="reduced")
    Qb, Rb = torch.linalg.qr(B.to(dtype), mode="reduced")
    P, S, Rh = torch.linalg.svd(Ra @ Rb.transpose(-1, -2), full_matrices=False)
    U, V = _fix_signs(Qa @ P, Qb @ Rh.transpose(-1, -2))
    return ProductSVD(U, S, V)


def split_sqrt(svd: ProductSVD, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The √S split of the top-`rank` part: (U_r S_r^½, V_r S_r^½), the SI factors."""
    if not 1 <= rank <= svd.S.shape[-1]:
        raise ValueError(f"rank {rank} is outside 1..{svd.S.shape[-1]} for this factorization")
    root = svd.S[..., :rank].sqrt().unsqueeze(-2)
    return svd.U[..., :rank] * root, svd.V[..., :rank] * root


def spectral_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral initialization of a (batched) matrix W (…, m, n): U (…, m, r), V (…, n, r) with
    U Vᵀ the best rank-r approximation of W (Eckart-Young). Returned in W's dtype."""
    Wc = W.to(compute_dtype(W.dtype))
    Uf, S, Vh = torch.linalg.svd(Wc, full_matrices=False)
    U, V = _fix_signs(Uf, Vh.transpose(-1, -2))
    A, B = split_sqrt(ProductSVD(U, S, V), rank)
    return A.to(W.dtype), B.to(W.dtype)


def spectral_product_factors(
    A: torch.Tensor, B: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SI of the product A Bᵀ without forming it.

    Returns (A_r, B_r, S): A_r B_rᵀ is the best rank-`rank` approximation of A Bᵀ, and S holds all
    singular values of the product (for error reporting). Factors come back in A's dtype.
    """
    svd = product_svd(A, B)
    A_r, B_r = split_sqrt(svd, rank)
    return A_r.to(A.dtype), B_r.to(B.dtype), svd.S


def augment_with_bias(W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Append the bias as an extra row: the factor of the affine map x ↦ x W + b acting on [x, 1].

    W (…, m, r), bias (…, r) → (…, m + 1, r); returns W unchanged when there is no bias.
    """
    if bias is None:
        return W
    return torch.cat([W, bias.unsqueeze(-2)], dim=-2)


def relative_tail_error(S: torch.Tensor, rank: int) -> float:
    """‖W − W_r‖_F / ‖W‖_F over all batch entries together, from singular values S (…, k)."""
    energy = S.double().square()
    total = energy.sum()
    if total == 0:
        return 0.0
    return float((energy[..., rank:].sum() / total).sqrt())
