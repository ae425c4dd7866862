"""Rank-adaptive (KLS) training recovers the rank of a low-rank least-squares target."""

import pytest
import torch
from torch import nn

from hf_fnl.dlrt import DLRTLinear, KLSIntegrator


def least_squares(seed=0, n=512, d_in=30, d_out=20, true_rank=3):
    g = torch.Generator().manual_seed(seed)
    W_true = torch.randn(d_out, true_rank, generator=g) @ torch.randn(true_rank, d_in, generator=g) / d_in**0.5
    X = torch.randn(n, d_in, generator=g)
    return X, X @ W_true.T, W_true


@pytest.mark.parametrize("start_rank", [1, 12])
def test_kls_finds_the_true_rank_from_below_and_above(start_rank):
    torch.manual_seed(0)
    X, Y, W_true = least_squares()
    layer = DLRTLinear(30, 20, rank=start_rank, bias=False)
    integrator = KLSIntegrator(layer, lr=0.3, theta=0.05)

    def closure():
        loss = (layer(X) - Y).square().mean()
        loss.backward()
        return loss

    for _ in range(300):
        loss = integrator.step(closure)
    ranks = [h[""] for h in integrator.rank_history]
    assert ranks[-1] == 3, ranks[-20:]
    assert loss < 1e-3 * Y.square().mean()
    W = layer.U @ layer.S @ layer.V.T
    assert (W - W_true).norm() / W_true.norm() < 0.05
    eye = torch.eye(layer.rank)
    assert torch.allclose(layer.U.T @ layer.U, eye, atol=1e-5) and torch.allclose(layer.V.T @ layer.V, eye, atol=1e-5)
    if start_rank == 1:
        assert max(ranks) >= 3  # it grew
    else:
        assert max(ranks) >= 12  # it started above the true rank and shrank to it


def test_kls_steps_the_other_parameters_and_respects_max_rank():
    torch.manual_seed(1)
    X, Y, _ = least_squares(true_rank=5)
    model = nn.Sequential(DLRTLinear(30, 20, rank=2), nn.Linear(20, 20))
    others = torch.optim.SGD([p for n, p in model.named_parameters()], lr=0.05)
    integrator = KLSIntegrator(model, lr=0.2, theta=0.01, others=others, max_rank=4)
    before = model[1].weight.detach().clone()

    def closure():
        model.zero_grad()
        loss = (model(X) - Y).square().mean()
        loss.backward()
        return loss

    first = integrator.step(closure)
    for _ in range(50):
        last = integrator.step(closure)
    assert last < first
    assert not torch.equal(model[1].weight, before)
    assert max(h["0"] for h in integrator.rank_history) <= 4


def test_from_dense_is_the_truncated_svd():
    dense = nn.Linear(16, 12).double()
    layer = DLRTLinear.from_dense(dense, rank=12)
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.allclose(layer(x), dense(x), atol=1e-10)
