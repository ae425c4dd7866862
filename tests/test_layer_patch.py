"""Factorized Linear/Conv2d layers inside models: fnl_patch's linear options, any nn.Module,
FD through the optimizers, save/load, merge, the parameter-budget helper."""

import copy

import pytest
import torch
from torch import nn

import hf_fnl
from hf_fnl.layer_patch import factorized_params, fnl_factorize_layers, rank_scale_for_budget
from hf_fnl.layers import FactorizedConv2d, FactorizedLinear
from hf_fnl.optim import FDAdamW, fnl_param_groups

from .tiny_models import build, inputs, tiny_arch

BERT = tiny_arch("bert")
FFN = r".*(intermediate|output)\.dense"  # attention.output.dense belongs to the attention patch


def test_fnl_patch_factorizes_the_ffn_and_leaves_attention_projections_to_the_attention_patch():
    model = hf_fnl.fnl_patch(build(BERT, "AutoModelForMaskedLM"), rank=0.5, linear_targets=FFN, linear_rank=0.25,
                             progress=False)
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.intermediate.dense, FactorizedLinear) and isinstance(layer.output.dense, FactorizedLinear)
    assert isinstance(layer.attention.output.dense, nn.Linear)
    assert layer.intermediate.dense.rank == 8  # round(0.25 · min(32, 37))
    rows = hf_fnl.fnl_summary(model).rows
    assert {r.form for r in rows} == {"qk", "ov", "linear"}
    assert {p.form for p in hf_fnl.fnl_factor_pairs(model)} == {"qk", "ov", "linear"}
    with torch.no_grad():
        assert torch.isfinite(model(**inputs(BERT)).logits).all()


@pytest.mark.parametrize("model_type,targets,task", [
    ("bert", FFN, "AutoModelForMaskedLM"),
    # ViT's forward reads its patch projection's weight dtype: FactorizedConv2d.weight answers it
    ("vit", r".*(patch_embeddings\.projection|mlp\.fc1)", "AutoModelForImageClassification"),
])
def test_full_rank_linear_factorization_reproduces_the_model(model_type, targets, task):
    arch = tiny_arch(model_type)
    model = build(arch, task)
    patched = hf_fnl.fnl_patch(copy.deepcopy(model), linear_targets=targets, linear_rank=1.0, progress=False)
    assert len(patched.config.fnl["layers"]) == (4 if model_type == "bert" else 3)  # 2 layers x 2, or conv + 2 fc1
    x = inputs(arch)
    with torch.no_grad():
        assert (model(**x).logits - patched(**x).logits).abs().max() <= 1e-5


def test_weight_property_is_the_dense_weight():
    linear, conv = nn.Linear(7, 5), nn.Conv2d(3, 4, 3, padding=1)
    for dense, cls in ((linear, FactorizedLinear), (conv, FactorizedConv2d)):
        factorized = cls.from_dense(dense, 100)  # above full rank: exact
        assert factorized.weight.shape == dense.weight.shape
        assert (factorized.weight - dense.weight).abs().max() <= 1e-5


@pytest.mark.parametrize("inner", [False, True])
def test_roundtrip_and_merge_with_factorized_layers(tmp_path, inner):
    model = hf_fnl.fnl_patch(build(BERT, "AutoModelForMaskedLM"), rank=0.5, linear_targets=FFN, linear_rank=1.5,
                             linear_inner=inner, progress=False)
    model.save_pretrained(tmp_path)
    loaded = hf_fnl.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = inputs(BERT)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)
        dense = hf_fnl.fnl_merge(loaded)
        assert (dense(**x).logits - loaded(**x).logits).abs().max() <= 1e-5
    vanilla = build(BERT, "AutoModelForMaskedLM")
    assert {k: v.shape for k, v in vanilla.state_dict().items()} == {k: v.shape for k, v in dense.state_dict().items()}


def test_decoupled_fd_on_u_m_v_follows_the_chain_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9))
    fnl_factorize_layers(model, ["0"], rank=4, inner=True, progress=False)
    layer = model[0]
    with torch.no_grad():
        layer.m.add_(0.3 * torch.randn(4, 4))
    u, m, v = (t.detach().clone().requires_grad_() for t in (layer.u, layer.m, layer.v))
    explicit = 0.5 * (u @ m @ v).square().sum()
    grads = dict(zip("umv", torch.autograd.grad(explicit, (u, m, v))))
    groups = fnl_param_groups(model, weight_decay=0.0, fd_coef=0.1, fd_targets=("linear",), no_decay={"0.bias"})
    assert groups[0]["fd_pairs"] == [(0, tuple(layer.u_layout), 1, tuple(layer.v_layout), 2)]  # u, v, m
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {k: getattr(layer, k).detach().clone() for k in "umv"}
    FDAdamW(groups, lr=0.5).step()
    for k in "umv":
        assert torch.allclose(getattr(layer, k), before[k] - 0.5 * 0.1 * grads[k], atol=1e-6), k


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def test_any_module_conv_factorization_and_closed_form_counts():
    torch.manual_seed(1)
    net = TinyResNet().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    full = copy.deepcopy(net)
    entries = fnl_factorize_layers(full, r"block\.\d", rank=24, progress=False)  # full rank: min(c_out·3, c_in·3) = 24
    assert set(entries) == {"block.0", "block.2"} and all(e["kind"] == "conv2d" for e in entries.values())
    assert torch.allclose(full(x), net(x), atol=1e-10)
    low = copy.deepcopy(net)
    fnl_factorize_layers(low, r"block\.\d", rank=0.25, progress=False)  # paper: 0.25 · c_out · k
    assert low.block[0].rank == 6 and low.block[2].rank == 12
    expected = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.block.parameters()) \
        + factorized_params(net.block[0], 6, False) + factorized_params(net.block[2], 12, False)
    assert sum(p.numel() for p in low.parameters()) == expected
    assert isinstance(low.block[0], FactorizedConv2d)


def test_rank_scale_for_a_parameter_budget():
    model = build(BERT, "AutoModelForMaskedLM")
    total = sum(p.numel() for p in model.parameters())
    scale = rank_scale_for_budget(model, FFN, fraction=0.8)
    patched = hf_fnl.fnl_patch(copy.deepcopy(model), forms=(), linear_targets=FFN, linear_rank=scale, progress=False)
    kept = sum(p.numel() for p in patched.parameters()) / total
    one_rank_step = 4 * (32 + 37) / total  # four layers, one rank each more or less
    assert abs(kept - 0.8) <= one_rank_step
    with pytest.raises(ValueError, match="out of reach"):
        rank_scale_for_budget(model, FFN, fraction=0.01)


def test_layer_errors():
    with pytest.raises(ValueError, match="no Linear/Conv1D/Conv2d layer matched"):
        hf_fnl.fnl_patch(build(BERT), forms=(), linear_targets="nothing", progress=False)
    with pytest.raises(ValueError, match="linear_rank"):
        hf_fnl.FNLConfig(linear_targets=FFN, linear_rank=0)
    with pytest.raises(ValueError, match="non-empty unless linear_targets"):
        hf_fnl.FNLConfig(forms=())
    with pytest.raises(ValueError, match="groups=1"):
        FactorizedConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2), rank=2)
