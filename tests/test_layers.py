"""FactorizedLinear / FactorizedConv2d against the dense layers they replace."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_fnl.layers import FactorizedConv2d, FactorizedLinear


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_linear_at_full_rank_is_the_dense_layer():
    torch.manual_seed(0)
    dense = nn.Linear(24, 16)
    layer = FactorizedLinear.from_dense(dense, rank=16)
    x = torch.randn(5, 3, 24)
    assert (layer(x) - dense(x)).abs().max() <= 1e-5
    assert layer.si_error < 1e-6


@pytest.mark.parametrize("rank", [1, 5, 12])
def test_linear_si_is_the_best_rank_r_approximation(rank):
    torch.manual_seed(1)
    dense = nn.Linear(20, 12).double()
    layer = FactorizedLinear.from_dense(dense, rank=rank)
    U, S, Vh = torch.linalg.svd(dense.weight.detach())
    best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    assert torch.allclose(layer.product(), best, atol=1e-12)
    assert layer.si_error == pytest.approx((S[rank:].square().sum() / S.square().sum()).sqrt().item(), rel=1e-9)
    assert sum(p.numel() for p in layer.parameters()) == rank * (20 + 12) + 12


def test_gpt2_conv1d_is_factorized_from_its_transposed_weight():
    torch.manual_seed(2)
    conv1d = Conv1D(16, 24)  # nf=16 outputs, nx=24 inputs, weight (24, 16)
    nn.init.normal_(conv1d.bias)
    layer = FactorizedLinear.from_dense(conv1d, rank=16)
    x = torch.randn(4, 24)
    assert (layer(x) - conv1d(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (0, 1), 1)])
def test_conv_layout_at_full_rank_is_the_dense_convolution(stride, padding, dilation):
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation).double()
    layer = FactorizedConv2d.from_dense(conv, rank=9)  # min(c_out·k, c_in·k) = 9
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    assert torch.allclose(layer(x), conv(x), atol=1e-10)


def test_conv_at_low_rank_runs_the_kernel_it_represents_and_is_best_rank_r():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    layer = FactorizedConv2d.from_dense(conv, rank=4)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert torch.allclose(layer(x), layer.to_dense()(x), atol=1e-10)
    P = FactorizedConv2d.kernel_matrix(conv.weight.detach())
    U, S, Vh = torch.linalg.svd(P)
    assert torch.allclose(layer.product(), (U[:, :4] * S[:4]) @ Vh[:4], atol=1e-12)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 4 * (4 + 6) + 6


@pytest.mark.parametrize("variant", ["full", "deep", "wide"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_overcomplete_variants_start_exact_train_everywhere_and_merge_exactly(variant, kind):
    torch.manual_seed(5)
    if kind == "linear":
        dense = nn.Linear(10, 6).double()
        m, make, x = 6, FactorizedLinear.from_dense, torch.randn(3, 10, dtype=torch.float64)
    else:
        dense = nn.Conv2d(2, 3, 3, padding=1).double()
        m, make, x = 9, FactorizedConv2d.from_dense, torch.randn(2, 2, 6, 6, dtype=torch.float64)
    rank = {"full": m, "deep": m, "wide": 3 * m}[variant]
    layer = make(dense, rank=rank, inner=variant == "deep", generator=seeded(0))
    assert torch.allclose(layer(x), dense(x), atol=1e-10)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    with torch.no_grad():  # after training steps the factors are no longer SI's: merge must still be exact
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    merged = layer.to_dense()
    assert type(merged) is type(dense)
    assert torch.allclose(merged(x), layer(x), atol=1e-10)


def test_default_init_matches_the_dense_layers_output_scale():
    torch.manual_seed(6)
    x = torch.randn(4096, 256)
    dense_std = nn.Linear(256, 256)(x).std()
    layer = FactorizedLinear(256, 256, rank=64)
    assert 0.8 < (layer(x).std() / dense_std).item() < 1.25
