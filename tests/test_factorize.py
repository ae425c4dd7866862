"""The pure math against explicit references: SVD of the formed product, Eckart-Young, the √S split."""

import pytest
import torch

from hf_fnl import factorize as F


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_product_svd_matches_svd_of_formed_product():
    A, B = rand(3, 20, 5, seed=1), rand(3, 17, 5, seed=2)
    svd = F.product_svd(A, B)
    P = A @ B.transpose(-1, -2)
    S_ref = torch.linalg.svdvals(P)[..., :5]
    assert torch.allclose(svd.S, S_ref, atol=1e-10)
    assert torch.allclose((svd.U * svd.S[..., None, :]) @ svd.V.transpose(-1, -2), P, atol=1e-10)
    eye = torch.eye(5, dtype=torch.float64).expand(3, 5, 5)
    assert torch.allclose(svd.U.transpose(-1, -2) @ svd.U, eye, atol=1e-10)
    assert torch.allclose(svd.V.transpose(-1, -2) @ svd.V, eye, atol=1e-10)


def test_product_svd_never_decomposes_a_large_matrix(monkeypatch):
    seen = []
    real_svd = torch.linalg.svd

    def spy(M, *a, **kw):
        seen.append(tuple(M.shape[-2:]))
        return real_svd(M, *a, **kw)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    F.spectral_product_factors(rand(4, 300, 8), rand(4, 300, 8), 4)
    assert seen == [(8, 8)]
    assert F.compute_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float64


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_spectral_product_factors_is_best_rank_r(rank):
    A, B = rand(2, 12, 6, seed=3), rand(2, 9, 6, seed=4)
    A_r, B_r, S = F.spectral_product_factors(A, B, rank)
    P = A @ B.transpose(-1, -2)
    U, S_ref, Vh = torch.linalg.svd(P, full_matrices=False)
    best = (U[..., :rank] * S_ref[..., None, :rank]) @ Vh[..., :rank, :]
    assert torch.allclose(A_r @ B_r.transpose(-1, -2), best, atol=1e-10)
    # √S split: both factors carry S^½, so AᵀA = BᵀB = diag(S_r) (balanced factors)
    diag = torch.diag_embed(S_ref[..., :rank])
    assert torch.allclose(A_r.transpose(-1, -2) @ A_r, diag, atol=1e-10)
    assert torch.allclose(B_r.transpose(-1, -2) @ B_r, diag, atol=1e-10)
    err = (P - A_r @ B_r.transpose(-1, -2)).square().sum()
    assert F.relative_tail_error(S, rank) == pytest.approx((err / P.square().sum()).sqrt().item(), rel=1e-8)


def test_spectral_factors_of_a_matrix():
    W = rand(15, 10, seed=5)
    U, V = F.spectral_factors(W, 4)
    Us, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert torch.allclose(U @ V.T, (Us[:, :4] * S[:4]) @ Vh[:4], atol=1e-10)
    assert torch.allclose(torch.linalg.norm(U, dim=0), S[:4].sqrt(), atol=1e-10)


def test_signs_are_deterministic():
    A, B = rand(8, 4, seed=6), rand(7, 4, seed=7)
    A_r, B_r, _ = F.spectral_product_factors(A, B, 3)
    # the same product from other factors (A Q)(B Q)ᵀ, Q orthogonal, gives the same SI factors
    Q, _ = torch.linalg.qr(rand(4, 4, seed=8))
    A2, B2, _ = F.spectral_product_factors(A @ Q, B @ Q, 3)
    assert torch.allclose(A_r, A2, atol=1e-10) and torch.allclose(B_r, B2, atol=1e-10)
    idx = A_r.abs().argmax(0)
    assert (A_r[idx, torch.arange(3)] > 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_inputs_factorize_in_float64_and_come_back_in_their_dtype(dtype):
    A, B = rand(2, 30, 8, dtype=torch.float32, seed=9), rand(2, 30, 8, dtype=torch.float32, seed=10)
    A_r, B_r, S = F.spectral_product_factors(A.to(dtype), B.to(dtype), 8)
    assert A_r.dtype == B_r.dtype == dtype and S.dtype == torch.float64
    P = (A.to(dtype).float() @ B.to(dtype).float().transpose(-1, -2))
    rel = (A_r.float() @ B_r.float().transpose(-1, -2) - P).norm() / P.norm()
    assert rel < (2e-2 if dtype != torch.float32 else 1e-6)  # only the final cast rounds


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6])
def test_thin_qr_against_householder(cond):
    U, _ = torch.linalg.qr(rand(3, 200, 16, seed=17))
    V, _ = torch.linalg.qr(rand(3, 16, 16, seed=18))
    A = (U * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 16, dtype=torch.float64)) @ V
    Q, R = F.thin_qr(A)
    eye = torch.eye(16, dtype=torch.float64)
    assert (Q.mT @ Q - eye).abs().max() < 1e-12
    assert (Q @ R - A).abs().max() < 1e-13
    assert torch.allclose(R.diagonal(dim1=-2, dim2=-1).abs(), torch.linalg.qr(A)[1].diagonal(dim1=-2, dim2=-1).abs(), rtol=1e-8)


def test_thin_qr_of_rank_deficient_input_falls_back_to_householder():
    A = rand(50, 4, seed=19)
    A[:, 3] = A[:, 0] + A[:, 1]
    Q, R = F.thin_qr(A)
    assert torch.allclose(Q @ R, A, atol=1e-12)
    assert torch.allclose(Q.mT @ Q, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_bias_augmentation_gives_the_affine_bilinear_form():
    Q, K, bq, bk = rand(6, 3, seed=11), rand(6, 3, seed=12), rand(3, seed=13), rand(3, seed=14)
    x, y = rand(4, 6, seed=15), rand(5, 6, seed=16)
    one = lambda t: torch.cat([t, torch.ones(t.shape[0], 1, dtype=t.dtype)], 1)  # noqa: E731
    A, B = F.augment_with_bias(Q, bq), F.augment_with_bias(K, bk)
    assert torch.allclose(one(x) @ A @ B.T @ one(y).T, (x @ Q + bq) @ (y @ K + bk).T, atol=1e-12)
    assert F.augment_with_bias(Q, None) is Q


def test_rank_out_of_range():
    with pytest.raises(ValueError, match="outside 1..3"):
        F.spectral_product_factors(rand(5, 3), rand(5, 3), 4)
