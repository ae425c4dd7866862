"""Frobenius decay against autograd of the explicit ‖A Bᵀ‖_F², and the Gram-form norms against SVD."""

import pytest
import torch

import hf_fnl
from hf_fnl import factorize as F
from hf_fnl.regularize import fd_penalty, form_norms

from .tiny_models import build, reduced_rank, tiny_arch


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("stacked", [False, True])
def test_penalty_and_analytic_gradients_match_autograd_of_the_explicit_product(stacked):
    shape_a, shape_b = ((3, 2, 6, 4), (3, 1, 5, 4)) if stacked else ((3, 6, 4), (3, 5, 4))
    A, B = rand(*shape_a, seed=0).requires_grad_(), rand(*shape_b, seed=1).requires_grad_()
    # explicit: each group's factor is the row-stack of its blocks; form the product and square it
    Am, Bm = (A.flatten(-3, -2), B.flatten(-3, -2)) if stacked else (A, B)
    explicit = 0.5 * (Am @ Bm.transpose(-1, -2)).square().sum()
    gA, gB = torch.autograd.grad(explicit, (A, B))
    assert F.frobenius_penalty(A, B, stacked).item() == pytest.approx(explicit.item(), rel=1e-12)
    aA, aB, none = F.frobenius_decay_grads(A.detach(), B.detach(), stacked)
    assert none is None
    assert torch.allclose(aA, gA, atol=1e-12) and torch.allclose(aB, gB, atol=1e-12)


def test_product_norms_match_svd():
    A, B = rand(4, 9, 3, seed=2), rand(4, 7, 3, seed=3)
    fro, nuc = F.product_norms(A, B)
    S = torch.linalg.svdvals(A @ B.transpose(-1, -2))
    assert torch.allclose(fro, S.square().sum(-1).sqrt(), rtol=1e-10)
    assert torch.allclose(nuc, S.sum(-1), rtol=1e-8)
    A[0, :, 2] = 0  # rank-deficient products are fine
    _, nuc0 = F.product_norms(A, B)
    assert nuc0[0] == pytest.approx(torch.linalg.svdvals(A[0] @ B[0].T).sum().item(), rel=1e-7)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "qwen2"])
def test_model_penalty_is_the_sum_over_heads(model_type):
    arch = tiny_arch(model_type)
    model = hf_fnl.fnl_patch(build(arch, dtype=torch.float64), rank=reduced_rank(arch), progress=False)
    pairs = hf_fnl.fnl_factor_pairs(model)
    explicit = sum(0.5 * p.product().square().sum() for p in pairs)
    value = fd_penalty(pairs)
    assert value.item() == pytest.approx(explicit.item(), rel=1e-10)
    value.backward()
    weights = [p.a.weight for p in pairs] + [p.b.weight for p in pairs]
    assert all(w.grad is not None for w in weights)
    norms = form_norms(pairs)
    fro = sum(torch.linalg.matrix_norm(p.product()).sum() for p in pairs if p.form == "ov")
    nuc = sum(torch.linalg.matrix_norm(p.product(), "nuc").sum() for p in pairs if p.form == "ov")
    assert norms["ov/frobenius"] == pytest.approx(fro.item(), rel=1e-8)
    assert norms["ov/nuclear"] == pytest.approx(nuc.item(), rel=1e-7)


def test_inner_factor_penalty_gradients_and_norms_match_autograd():
    U, M, V = rand(2, 8, 3, seed=4).requires_grad_(), rand(2, 3, 3, seed=5).requires_grad_(), rand(2, 6, 3, seed=6).requires_grad_()
    P = U @ M @ V.transpose(-1, -2)
    explicit = 0.5 * P.square().sum()
    grads = torch.autograd.grad(explicit, (U, M, V))
    assert F.frobenius_penalty(U, V, M=M).item() == pytest.approx(explicit.item(), rel=1e-12)
    gU, gV, gM = F.frobenius_decay_grads(U.detach(), V.detach(), M=M.detach())
    for analytic, reference in zip((gU, gM, gV), grads):
        assert torch.allclose(analytic, reference, atol=1e-12)
    fro, nuc = F.product_norms(U.detach(), V.detach(), M=M.detach())
    S = torch.linalg.svdvals(P.detach())
    assert torch.allclose(fro, S.square().sum(-1).sqrt(), rtol=1e-10) and torch.allclose(nuc, S.sum(-1), rtol=1e-8)
