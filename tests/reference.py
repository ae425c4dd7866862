"""Explicit per-head products of an attention module, written independently of hf_fnl's patch code:
a loop over heads, the d×d matrices formed, for checking SI against a plain SVD."""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D


def _proj(attn, proj):
    m = attn.get_submodule(proj.path)
    W = m.weight.T if isinstance(m, Conv1D) else m.weight
    n = W.shape[0] // proj.chunks
    b = m.bias[proj.chunk * n:(proj.chunk + 1) * n] if m.bias is not None else None
    return W[proj.chunk * n:(proj.chunk + 1) * n], b


def per_head_products(attn, layout, head_size: int) -> dict[str, torch.Tensor]:
    """{"qk": (H, d+1?, d+1?) per query head, "ov": (G, d(+1), k·d_out) per key/value group}.

    QK: [Q_h; b_q,h][K_h; b_k,h]ᵀ (bias rows where the projection has a bias).
    OV: V_g [O_h1 … O_hk]ᵀ, with V's bias row only when the output projection has no bias
    (otherwise the value bias is a constant after the softmax average and folds into the output bias).
    """
    Wq, bq = _proj(attn, layout.query)
    Wk, bk = _proj(attn, layout.key)
    Wv, bv = _proj(attn, layout.value)
    Wo, bo = _proj(attn, layout.output)
    H, G = Wq.shape[0] // head_size, Wk.shape[0] // head_size
    k = H // G

    def factor(W, b, h):
        F = W[h * head_size:(h + 1) * head_size].T
        return F if b is None else torch.cat([F, b[h * head_size:(h + 1) * head_size][None]], 0)

    qk = torch.stack([factor(Wq, bq, h) @ factor(Wk, bk, h // k).T for h in range(H)]) if G == H else None
    ov = []
    for g in range(G):
        V = factor(Wv, bv if bo is None else None, g)
        O = torch.cat([Wo[:, h * head_size:(h + 1) * head_size] for h in range(g * k, (g + 1) * k)], 0)
        ov.append(V @ O.T)
    return {"qk": qk, "ov": torch.stack(ov)}


def best_rank_r(P: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD reconstruction of each matrix in P and the squared tail energy."""
    U, S, Vh = torch.linalg.svd(P, full_matrices=False)
    return (U[..., :r] * S[..., None, :r]) @ Vh[..., :r, :], S[..., r:].square().sum(-1)
