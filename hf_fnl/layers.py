"""Factorized Linear and Conv2d layers: W = U Vᵀ, or U M Vᵀ with an inner r×r factor.

Both store U as `u` (m_out × r) and Vᵀ as `v` (r × m_in), so the factors are plain 2-D tensors
with the same block layouts as attention factors (Frobenius decay and the optimizers treat them
alike). A convolution's c_out × c_in × k × k kernel is the (c_out·k) × (c_in·k) matrix
P[(o, w), (c, h)] = K[o, c, h, w]; its factors run as a k×1 convolution into r channels, then a
1×k convolution (Tai et al. 2016, the paper's layout), at k·r·(c_in + c_out) weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .blocks import BlockLayout
from .factorize import spectral_factors

__all__ = ["FactorizedLayer", "FactorizedLinear", "FactorizedConv2d"]


class FactorizedLayer(nn.Module):
    """Shared parameters and bookkeeping of the factorized layers."""

    def __init__(self, m_out: int, m_in: int, rank: int, bias_features: int | None, inner: bool, device=None, dtype=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        factory = dict(device=device, dtype=dtype)
        self.rank = rank
        self.u = nn.Parameter(torch.empty(m_out, rank, **factory))
        self.v = nn.Parameter(torch.empty(rank, m_in, **factory))
        self.m = nn.Parameter(torch.eye(rank, **factory)) if inner else None
        self.bias = nn.Parameter(torch.zeros(bias_features, **factory)) if bias_features else None
        self.si_error: float | None = None  # relative Frobenius error of SI, when built by SI
        self.params_before: int | None = None  # parameters of the dense layer it replaced
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh factors whose product has nn.Linear's default variance (the no-SI baseline)."""
        m_in = self.v.shape[1]
        # Var(Σ_r u v) = r σ_u² σ_v² should equal 1/(3 m_in) (kaiming_uniform with a=√5)
        std = (1.0 / (3 * m_in * self.rank)) ** 0.25
        with torch.no_grad():
            self.u.normal_(0, std)
            self.v.normal_(0, std)
            if self.bias is not None:
                bound = 1 / math.sqrt(m_in)
                self.bias.uniform_(-bound, bound)

    @property
    def u_layout(self) -> BlockLayout:
        return BlockLayout(False, False, 0, 1, 1, self.rank)  # U: one block of r "input" columns

    @property
    def v_layout(self) -> BlockLayout:
        return BlockLayout(False, True, 0, 1, 1, self.rank)  # V: one block of r "output" rows

    def product(self) -> torch.Tensor:
        """U (M) Vᵀ, the (m_out × m_in) matrix the layer applies."""
        return self.u @ self.m @ self.v if self.m is not None else self.u @ self.v

    @torch.no_grad()
    def set_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Install A (m_out × r) and B (m_in × r) as U and V; M (if any) becomes the identity."""
        self.u.copy_(A)
        self.v.copy_(B.T)
        if self.m is not None:
            self.m.copy_(torch.eye(self.rank))

    @torch.no_grad()
    def spectral_init(self, W: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """SI from the dense matrix W (m_out × m_in) this layer replaces; records the relative error."""
        A, B = spectral_factors(W, self.rank, generator)
        self.set_factors(A, B)
        W64 = W.double()
        self.si_error = float((W64 - A.double() @ B.double().T).norm() / W64.norm()) if W64.norm() > 0 else 0.0

    @torch.no_grad()
    def _take_from(self, dense: nn.Module, W: torch.Tensor, init: str, generator: torch.Generator | None):
        """Start from the dense layer this one replaces (W: its weight as a matrix): SI of W and its
        bias for init="spectral", the fresh init otherwise."""
        self.params_before = sum(p.numel() for p in dense.parameters())
        if init == "spectral":
            self.spectral_init(W.detach(), generator)
            if dense.bias is not None:
                self.bias.copy_(dense.bias.detach())
        return self

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """The dense layer (nn.Linear / nn.Conv2d) that applies the same map."""
        dense = self._empty_dense()
        dense.weight.copy_(self.weight)
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return f"rank={self.rank}, inner={self.m is not None}, bias={self.bias is not None}"


class FactorizedLinear(FactorizedLayer):
    """y = x V (Mᵀ) Uᵀ + b: two (three) thin matrix products instead of one m_out × m_in."""

    form = "linear"  # its factor pair's form (fnl_factor_pairs, fd_targets, the summary)

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, inner: bool = False,
                 device=None, dtype=None):
        self.in_features, self.out_features = in_features, out_features
        super().__init__(out_features, in_features, rank, out_features if bias else None, inner, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.v)
        if self.m is not None:
            h = F.linear(h, self.m)
        return F.linear(h, self.u, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out_features × in_features) weight the layer applies, computed: for code that
        reads `layer.weight` of a Linear (its dtype, device or shape)."""
        return self.product()

    @classmethod
    def from_dense(cls, layer: nn.Linear | Conv1D, rank: int, inner: bool = False, init: str = "spectral",
                   generator: torch.Generator | None = None) -> FactorizedLinear:
        """Factorize an nn.Linear (or GPT-2 Conv1D) by SI of its weight, or freshly (init="default")."""
        W = layer.weight.T if isinstance(layer, Conv1D) else layer.weight
        out_features, in_features = W.shape
        new = cls(in_features, out_features, rank, bias=layer.bias is not None, inner=inner,
                  device=W.device, dtype=W.dtype)
        return new._take_from(layer, W, init, generator)

    def _empty_dense(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=self.u.device, dtype=self.u.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


class FactorizedConv2d(FactorizedLayer):
    """A k×k convolution as a k×1 convolution into `rank` channels, (a 1×1 by M,) then a 1×k one.

    Exact when the kernel matrix P[(o, w), (c, h)] = K[o, c, h, w] has rank ≤ r, for any stride,
    zero padding and dilation (height handled by the first convolution, width by the last)."""

    form = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int, stride=1, padding=0,
                 dilation=1, bias: bool = True, inner: bool = False, device=None, dtype=None):
        k = _pair(kernel_size, "kernel_size")
        if k[0] != k[1]:
            raise ValueError(f"FactorizedConv2d needs a square kernel, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k[0]
        self.stride, self.padding, self.dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
        super().__init__(out_channels * k[0], in_channels * k[0], rank, out_channels if bias else None, inner, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, r = self.kernel_size, self.rank
        first = self.v.view(r, self.in_channels, k, 1)
        h = F.conv2d(x, first, None, (self.stride[0], 1), (self.padding[0], 0), (self.dilation[0], 1))
        if self.m is not None:
            h = F.conv2d(h, self.m[:, :, None, None])
        last = self.u.view(self.out_channels, k, r).permute(0, 2, 1).unsqueeze(2)
        return F.conv2d(h, last, self.bias, (1, self.stride[1]), (0, self.padding[1]), (1, self.dilation[1]))

    @property
    def weight(self) -> torch.Tensor:
        """The dense (c_out, c_in, k, k) kernel the layer applies, computed: for code that reads
        `conv.weight` (transformers' ViT reads its patch projection's dtype)."""
        k = self.kernel_size
        return self.product().view(self.out_channels, k, self.in_channels, k).permute(0, 2, 3, 1)

    @staticmethod
    def kernel_matrix(kernel: torch.Tensor) -> torch.Tensor:
        """(c_out, c_in, k, k) kernel → the (c_out·k) × (c_in·k) matrix P[(o, w), (c, h)]."""
        c_out, c_in, k, _ = kernel.shape
        return kernel.permute(0, 3, 1, 2).reshape(c_out * k, c_in * k)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int, inner: bool = False, init: str = "spectral",
                   generator: torch.Generator | None = None) -> FactorizedConv2d:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FactorizedConv2d supports groups=1, zero padding given as numbers; got groups="
                             f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride, conv.padding,
                  conv.dilation, bias=conv.bias is not None, inner=inner,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        return new._take_from(conv, cls.kernel_matrix(conv.weight), init, generator)

    def _empty_dense(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None, device=self.u.device, dtype=self.u.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, " + super().extra_repr())
