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
    "thin_qr",
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


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Precision of the QR/SVD for `t`: float64, whatever t's dtype, except on MPS (no float64 there).

    torch has no bf16 SVD, fp16 loses the small singular values that decide the rank, and float64
    makes a full-rank patch reproduce a float32 model to float32 rounding (≤1e-5 on logits). The
    matrices are small (d × d_h per head), so the cost is the same order as float32.
    """
    return torch.float32 if t.device.type == "mps" else torch.float64


def thin_qr(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of a tall (…, m, k) matrix.

    In float64: CholeskyQR2, two passes of R = chol(AᵀA), Q = A R⁻¹ (R⁻¹ of the small k×k factor,
    then one batched matrix product); about 10x faster than Householder QR on CPU and as accurate
    for cond(A) ≲ 1e7. Where Cholesky fails (rank-deficient A) and in float32: Householder QR.
    """
    if A.dtype == torch.float64:
        Q, R = A, None
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        for _ in range(2):
            L, info = torch.linalg.cholesky_ex(Q.mT @ Q)
            if info.any():
                break
            Q = Q @ torch.linalg.solve_triangular(L.mT, eye, upper=True)
            R = L.mT if R is None else L.mT @ R
        else:
            return Q, R
    return torch.linalg.qr(A, mode="reduced")


def _fix_signs(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip singular-vector pairs so that the largest-magnitude entry of each U column is positive.

    SVD signs depend on the LAPACK path; this makes the factors a deterministic function of W.
    """
    idx = U.abs().argmax(dim=-2, keepdim=True)
    signs = torch.gather(U, -2, idx).sign()
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs, V * signs


def product_svd(A: torch.Tensor, B: torch.Tensor, rank: int | None = None) -> ProductSVD:
    """SVD of A Bᵀ through thin QRs, never forming the m×n product.

    A = Qa Ra, B = Qb Rb, so A Bᵀ = Qa (Ra Rbᵀ) Qbᵀ and the SVD of the small k×k core
    Ra Rbᵀ = P S Rᵀ gives U = Qa P, V = Qb R. Cost O((m + n) k²) per batch entry. With `rank`,
    only the leading `rank` singular vectors are formed (S is always complete).
    Runs in `compute_dtype` of the inputs on their device; returns in that dtype.
    """
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(f"inner dimensions differ: A {tuple(A.shape)}, B {tuple(B.shape)}")
    dtype = compute_dtype(A)
    Qa, Ra = thin_qr(A.to(dtype))
    Qb, Rb = thin_qr(B.to(dtype))
    P, S, Rh = torch.linalg.svd(Ra @ Rb.transpose(-1, -2), full_matrices=False)
    U, V = _fix_signs(Qa @ P[..., :rank], Qb @ Rh[..., :rank, :].transpose(-1, -2))
    return ProductSVD(U, S, V)


def split_sqrt(svd: ProductSVD, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The √S split of the top-`rank` part: (U_r S_r^½, V_r S_r^½), the SI factors."""
    if not 1 <= rank <= svd.U.shape[-1]:
        raise ValueError(f"rank {rank} is outside 1..{svd.U.shape[-1]} for this factorization")
    root = svd.S[..., :rank].sqrt().unsqueeze(-2)
    return svd.U[..., :rank] * root, svd.V[..., :rank] * root


def spectral_factors(W: torch.Tensor, rank: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral initialization of a (batched) matrix W (…, m, n): U (…, m, r), V (…, n, r) with
    U Vᵀ the best rank-r approximation of W (Eckart-Young). Returned in W's dtype.

    Overcomplete ranks (r > min(m, n)) keep U Vᵀ = W exactly: the extra columns of V are zero and
    those of U small random vectors (scaled like the SI columns), so every entry gets a gradient
    (zero columns in both factors would get none and stay zero)."""
    Wc = W.to(compute_dtype(W))
    Uf, S, Vh = torch.linalg.svd(Wc, full_matrices=False)
    U, V = _fix_signs(Uf, Vh.transpose(-1, -2))
    k = min(rank, S.shape[-1])
    A, B = split_sqrt(ProductSVD(U, S, V), k)
    if rank > k:
        extra = rank - k
        scale = (S[..., :k].mean(-1).sqrt() / W.shape[-2] ** 0.5)[..., None, None]
        noise = torch.randn(*A.shape[:-1], extra, generator=generator, dtype=A.dtype, device="cpu").to(A.device)
        A = torch.cat([A, noise * scale], dim=-1)
        B = torch.cat([B, B.new_zeros(*B.shape[:-1], extra)], dim=-1)
    return A.to(W.dtype), B.to(W.dtype)


def spectral_product_factors(
    A: torch.Tensor, B: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SI of the product A Bᵀ without forming it.

    Returns (A_r, B_r, S): A_r B_rᵀ is the best rank-`rank` approximation of A Bᵀ, and S holds all
    singular values of the product (for error reporting). Factors come back in A's dtype.
    """
    if not 1 <= rank <= A.shape[-1]:
        raise ValueError(f"rank {rank} is outside 1..{A.shape[-1]} for this factorization")
    svd = product_svd(A, B, rank)
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


# --------------------------------------------------------------------------- Frobenius decay
# Factors may carry an extra "stack" dimension: A (…, k, m, r) holds k blocks whose row-stack is the
# factor (a GQA group's output blocks O_h1 … O_hk). Gram matrices then sum over the blocks.


def gram(F: torch.Tensor, stacked: bool = False) -> torch.Tensor:
    """FᵀF of each factor (…, m, r) → (…, r, r); with `stacked`, of the row-stack of dim −3's blocks."""
    G = F.transpose(-1, -2) @ F
    return G.sum(-3) if stacked else G


def frobenius_penalty(A: torch.Tensor, B: torch.Tensor, stacked: bool = False,
                      M: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_batch ½‖A Bᵀ‖_F² (or ½‖A M Bᵀ‖_F²) in the Gram form ½ tr((AᵀA) M (BᵀB) Mᵀ), O((m + n) r²),
    differentiable. With `stacked`, A and B are (…, k, m, r) block stacks (see `gram`)."""
    Ga, Gb = gram(A, stacked), gram(B, stacked)
    if M is not None:
        Gb = M @ Gb @ M.transpose(-1, -2)
    return 0.5 * (Ga * Gb).sum()


def frobenius_decay_grads(A: torch.Tensor, B: torch.Tensor, stacked: bool = False, M: torch.Tensor | None = None):
    """Analytic gradients of `frobenius_penalty`: (A (BᵀB), B (AᵀA)), or with an inner factor
    (A M(BᵀB)Mᵀ, B Mᵀ(AᵀA)M, (AᵀA) M (BᵀB)); the third entry is None without M."""
    Ga, Gb = gram(A, stacked), gram(B, stacked)
    grad_m = None
    if M is not None:
        grad_m = Ga @ M @ Gb
        Ga, Gb = M.transpose(-1, -2) @ Ga @ M, M @ Gb @ M.transpose(-1, -2)
    if stacked:
        Ga, Gb = Ga.unsqueeze(-3), Gb.unsqueeze(-3)
    return A @ Gb, B @ Ga, grad_m


def product_norms(A: torch.Tensor, B: torch.Tensor, stacked: bool = False,
                  M: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius and nuclear norms of each product A Bᵀ (or A M Bᵀ) from r×r Grams only.

    The singular values of A M Bᵀ are the square roots of the eigenvalues of Ga^½ M Gb Mᵀ Ga^½.
    Returns two tensors of the batch shape; computed in float64 (float32 on MPS)."""
    dtype = compute_dtype(A)
    Ga, Gb = gram(A.to(dtype), stacked), gram(B.to(dtype), stacked)
    if M is not None:
        M = M.to(dtype)
        Gb = M @ Gb @ M.transpose(-1, -2)
    w, E = torch.linalg.eigh(Ga)
    root = (E * w.clamp_min(0).sqrt().unsqueeze(-2)) @ E.transpose(-1, -2)
    ev = torch.linalg.eigvalsh(root @ Gb @ root).clamp_min(0)
    return ev.sum(-1).sqrt(), ev.sqrt().sum(-1)
