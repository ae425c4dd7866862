"""Lamb, Flambe and FDAdamW against a plain for-loop reference written here, tensor by tensor, with the
FD term from autograd of the explicit per-head penalty."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import hf_fnl
from hf_fnl.blocks import BlockLayout
from hf_fnl.optim import FDAdamW, Flambe, Lamb, fnl_param_groups

from .tiny_models import build, reduced_rank, tiny_arch

G, R, M, N = 3, 4, 10, 7
LAYOUT_A = BlockLayout(False, True, 0, G, 1, R)  # rows g·R:(g+1)·R of a (G·R, M) weight, like a query projection
LAYOUT_B = BlockLayout(False, False, 0, G, 1, R)  # columns of an (N, G·R) weight, like an output projection


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"a": r(G * R, M), "b": r(N, G * R), "w": r(5, 6), "zero": torch.zeros(4, 3), "bias": r(6)}


def explicit_penalty(a, b):
    """½ Σ_g ‖A_g B_gᵀ‖_F² with A_g = a[g·R:(g+1)·R]ᵀ and B_g = b[:, g·R:(g+1)·R], formed explicitly."""
    return sum(0.5 * (a[g * R:(g + 1) * R].T @ b[:, g * R:(g + 1) * R].T).square().sum() for g in range(G))


def reference_run(params, grads_per_step, lr, betas, eps, wd, fd, trust, fd_on, decayed):
    """Tensor-by-tensor loop: Adam moments, decay inside the update, trust ratio."""
    p = {k: v.clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        a, b = p["a"].clone().requires_grad_(), p["b"].clone().requires_grad_()
        fd_grad = dict(zip("ab", torch.autograd.grad(explicit_penalty(a, b), (a, b)))) if fd_on else {}
        new = {}
        for k in p:
            m[k] = betas[0] * m[k] + (1 - betas[0]) * grads[k]
            v[k] = betas[1] * v[k] + (1 - betas[1]) * grads[k] ** 2
            u = (m[k] / (1 - betas[0] ** t)) / ((v[k] / (1 - betas[1] ** t)).sqrt() + eps)
            if k in fd_grad:
                u = u + fd * fd_grad[k]
            elif k in decayed:
                u = u + wd * p[k]
            ratio = 1.0
            if trust:
                pn, un = p[k].norm(), u.norm()
                ratio = (pn / un).item() if pn > 0 and un > 0 else 1.0
            new[k] = p[k] - lr * ratio * u
        p = new
    return p


def run(opt_cls, params, grads_per_step, fd_on, wd, fd, **kw):
    tensors = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    groups = [{"params": [tensors["a"], tensors["b"]], "weight_decay": wd, "fd_coef": fd,
               "fd_pairs": [(0, tuple(LAYOUT_A), 1, tuple(LAYOUT_B), -1)] if fd_on else []},
              {"params": [tensors["w"], tensors["zero"]], "weight_decay": wd},
              {"params": [tensors["bias"]], "weight_decay": 0.0}]
    opt = opt_cls(groups, **kw)
    for grads in grads_per_step:
        for k, t in tensors.items():
            t.grad = grads[k].clone()
        opt.step()
    return {k: t.detach() for k, t in tensors.items()}, opt


def random_grads(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        grads = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        grads["zero"] = torch.zeros_like(params["zero"])  # zero tensor, zero gradient: trust ratio falls back to 1
        out.append(grads)
    return out


CASES = {
    "lamb": (Lamb, False, True),
    "flambe": (Flambe, True, True),
    "fd_adamw": (FDAdamW, True, False),
    "adamw": (FDAdamW, False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_for_loop_reference(name):
    opt_cls, fd_on, trust = CASES[name]
    params = make_params()
    grads = random_grads(params, 6)
    kw = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-6)
    got, _ = run(opt_cls, params, grads, fd_on, wd=0.01, fd=0.02, **kw)
    ref = reference_run(params, grads, wd=0.01, fd=0.02, trust=trust, fd_on=fd_on,
                        decayed={"a", "b", "w", "zero"}, **kw)
    for k in params:
        assert torch.allclose(got[k], ref[k], rtol=1e-12, atol=1e-12), k
    assert not torch.equal(got["a"], params["a"])


def test_fd_adamw_without_fd_is_torch_adamw():
    params = make_params()
    grads = random_grads(params, 5)
    got, _ = run(FDAdamW, params, grads, fd_on=False, wd=0.01, fd=0.0, lr=0.01, eps=1e-8)
    tensors = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = torch.optim.AdamW([{"params": [tensors[k] for k in ("a", "b", "w", "zero")], "weight_decay": 0.01},
                             {"params": [tensors["bias"]], "weight_decay": 0.0}], lr=0.01, eps=1e-8, foreach=False)
    for g in grads:
        for k, t in tensors.items():
            t.grad = g[k].clone()
        opt.step()
    for k in params:
        assert torch.allclose(got[k], tensors[k].detach(), rtol=1e-12, atol=1e-14), k


def test_flambe_with_zero_fd_is_lamb_without_decay_on_the_factors():
    params = make_params()
    grads = random_grads(params, 4)
    flambe, _ = run(Flambe, params, grads, fd_on=True, wd=0.0, fd=0.0, lr=0.05)
    lamb, _ = run(Lamb, params, grads, fd_on=False, wd=0.0, fd=0.0, lr=0.05)
    for k in params:
        assert torch.equal(flambe[k], lamb[k]), k


def test_factor_tensors_keep_their_trust_ratio_under_the_decayed_rule():
    """trust_ratio_on='decayed' (NVIDIA's rule) with weight_decay 0: the FD factors still get ‖p‖/‖u‖."""
    params = make_params()
    grads = random_grads(params, 3)
    kw = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-6)
    got, opt = run(Flambe, params, grads, fd_on=True, wd=0.0, fd=0.02, trust_ratio_on="decayed", **kw)
    with_trust = reference_run(params, grads, wd=0.0, fd=0.02, trust=True, fd_on=True, decayed=set(), **kw)
    without = reference_run(params, grads, wd=0.0, fd=0.02, trust=False, fd_on=True, decayed=set(), **kw)
    for k in ("a", "b"):
        assert torch.allclose(got[k], with_trust[k], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(got[k], without[k], rtol=1e-6)
    # the undecayed tensors fall back to a trust ratio of 1 under that rule
    assert torch.allclose(got["w"], without["w"], rtol=1e-12, atol=1e-12)
    assert opt.last_trust_ratio is not None


@pytest.mark.parametrize("opt_cls", [Lamb, Flambe, FDAdamW])
def test_state_dict_resumes_exactly(opt_cls):
    params = make_params()
    grads = random_grads(params, 6)
    fd_on = opt_cls is not Lamb
    full, _ = run(opt_cls, params, grads, fd_on, wd=0.01, fd=0.02, lr=0.05)
    half, opt = run(opt_cls, params, grads[:3], fd_on, wd=0.01, fd=0.02, lr=0.05)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what Trainer's resume does
    tensors = {k: torch.nn.Parameter(v.clone()) for k, v in half.items()}
    groups = [{"params": [tensors["a"], tensors["b"]]}, {"params": [tensors["w"], tensors["zero"]]},
              {"params": [tensors["bias"]]}]
    resumed = opt_cls(groups, lr=0.05)
    resumed.load_state_dict(state)
    for g in grads[3:]:
        for k, t in tensors.items():
            t.grad = g[k].clone()
        resumed.step()
    for k in params:
        assert torch.equal(tensors[k].detach(), full[k]), k


def test_lamb_refuses_fd_groups():
    p = torch.nn.Parameter(torch.randn(G * R, M))
    q = torch.nn.Parameter(torch.randn(N, G * R))
    with pytest.raises(ValueError, match="Flambe or FDAdamW"):
        Lamb([{"params": [p, q], "fd_pairs": [(0, tuple(LAYOUT_A), 1, tuple(LAYOUT_B), -1)]}])


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_param_groups_of_a_patched_model(model_type):
    arch = tiny_arch(model_type)
    model = hf_fnl.fnl_patch(build(arch, "AutoModel"), rank=reduced_rank(arch), progress=False)
    groups = fnl_param_groups(model, weight_decay=0.01, fd_targets=("ov",))
    fd_group, decay_group, no_decay_group = groups
    assert fd_group["fd_coef"] == 0.01 and len(fd_group["fd_pairs"]) == 2  # two layers, one OV pair each
    assert all(p.ndim == 2 for p in fd_group["params"])
    assert all(p.ndim == 1 for p in no_decay_group["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    # one FDAdamW step with a zero gradient moves the factors by exactly lr · fd · A(BᵀB)
    before = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    FDAdamW(groups, lr=0.1).step()
    pairs_before = hf_fnl.fnl_factor_pairs(before, forms=("ov",))
    for pair_b, pair_a in zip(pairs_before, hf_fnl.fnl_factor_pairs(model, forms=("ov",))):
        A, B = pair_b.a.view(), pair_b.b.view()
        Gb = (B.transpose(-1, -2) @ B).sum(1, keepdim=True)
        assert torch.allclose(pair_a.a.view(), A - 0.1 * 0.01 * A @ Gb, atol=1e-7)
