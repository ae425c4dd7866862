"""fnl_patch on every supported architecture: exactness at full rank, SI optimality at reduced rank,
head count, parameter counts, dtype, factor pairs."""

from __future__ import annotations

import copy

import pytest
import torch

import hf_fnl
from hf_fnl.patch import PATCH_ATTR, fnl_attention_modules

from .reference import best_rank_r, per_head_products
from .tiny_models import ARCH_IDS, ROPE_TYPES, SEQ, TINY_ARCHS, build, inputs, reduced_rank, tiny_arch

CASES = [(a, c) for a in TINY_ARCHS for c in a.auto_classes]
GENERATIVE = [a for a in TINY_ARCHS if a.kind in ("decoder", "seq2seq")]


def patched_copy(model, **kw):
    return hf_fnl.fnl_patch(copy.deepcopy(model), progress=False, **kw)


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("arch,auto_class", CASES, ids=[f"{a.model_type}-{c}" for a, c in CASES])
def test_full_rank_reproduces_outputs(arch, auto_class, masked):
    model = build(arch, auto_class)
    x = inputs(arch, masked, auto_class=auto_class)
    patched = patched_copy(model)
    with torch.no_grad():
        ref = model(**x, output_hidden_states=True)
        out = patched(**x, output_hidden_states=True)
    compared = 0
    for key in ("logits", "last_hidden_state", "hidden_states", "encoder_hidden_states",
                "decoder_hidden_states", "encoder_last_hidden_state"):
        r, o = ref.get(key), out.get(key)
        if r is None:
            continue
        for rt, ot in zip(r if isinstance(r, tuple) else (r,), o if isinstance(o, tuple) else (o,)):
            assert max_diff(rt, ot) <= 1e-5, key
            compared += 1
    assert compared >= 2


@pytest.mark.parametrize("arch", GENERATIVE, ids=[a.model_type for a in GENERATIVE])
def test_generate_same_tokens_with_kv_cache(arch):
    auto = "AutoModelForCausalLM" if arch.kind == "decoder" else "AutoModelForSeq2SeqLM"
    model = build(arch, auto)
    x = inputs(arch, masked=True)
    x.pop("decoder_input_ids", None)
    patched = patched_copy(model)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    ref = model.generate(**x, **kw)
    out = patched.generate(**x, **kw)
    assert ref.shape[1] >= 8
    assert torch.equal(ref, out)


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_si_products_are_best_rank_r(arch):
    model = build(arch, dtype=torch.float64)
    rank = reduced_rank(arch)
    before = {name: per_head_products(m, layout, hf_fnl.patch._get(m, layout.head_size_attrs[0]))
              for name, m, layout in fnl_attention_modules(model)}
    qk_weights = {name: [t.clone() for p in (layout.query, layout.key) for t in m.get_submodule(p.path).parameters()]
                  for name, m, layout in fnl_attention_modules(model)}
    patched = hf_fnl.fnl_patch(model, rank=rank, progress=False)
    checked = 0
    for name, module, layout in fnl_attention_modules(patched):
        info = getattr(module, PATCH_ATTR)
        after = per_head_products(module, layout, info.rank)
        for form in info.forms:
            P, P_r = before[name][form], after[form]
            best, tail = best_rank_r(P, info.rank)
            scale = P.abs().max()
            assert (P_r - best).abs().max() <= 1e-9 * scale, (name, form)
            err = (P - P_r).square().sum((-2, -1))
            assert torch.allclose(err, tail, rtol=1e-8, atol=1e-12 * scale.item() ** 2), (name, form)
            total = P.square().sum()
            assert info.si_error[form] == pytest.approx((tail.sum() / total).sqrt().item(), rel=1e-6, abs=1e-9)
            checked += 1
        if arch.model_type in ROPE_TYPES:  # the QK basis carries RoPE and must be left exactly as it was
            assert info.forms == ("ov",)
            now = [t for p in (layout.query, layout.key) for t in module.get_submodule(p.path).parameters()]
            assert len(now) == len(qk_weights[name]) > 0
            assert all(torch.equal(a, b) for a, b in zip(now, qk_weights[name]))
    assert checked >= 2


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_factor_pairs_are_the_weight_part_of_the_products(arch):
    patched = hf_fnl.fnl_patch(build(arch, dtype=torch.float64), rank=reduced_rank(arch), progress=False)
    pairs = {(p.module_name, p.form): p for p in hf_fnl.fnl_factor_pairs(patched)}
    modules = fnl_attention_modules(patched)
    assert len(pairs) == sum(len(getattr(m, PATCH_ATTR).forms) for _, m, _ in modules)
    for name, module, layout in modules:
        info = getattr(module, PATCH_ATTR)
        ref = per_head_products(module, layout, info.rank)
        for form in info.forms:
            pair = pairs[(name, form)]
            d = pair.a.matrix().shape[1]
            assert torch.allclose(pair.product(), ref[form][:, :d, : pair.b.matrix().shape[1]], atol=1e-12)
            # views share storage with the parameters, so an optimizer can update heads in place
            assert pair.a.view().untyped_storage().data_ptr() == pair.a.weight.untyped_storage().data_ptr()
            assert pair.b.view().untyped_storage().data_ptr() == pair.b.weight.untyped_storage().data_ptr()


def _attention_maps(out):
    for key in ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions"):
        for t in out.get(key) or ():
            yield key, t


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_head_count_unchanged(arch):
    model = build(arch)
    patched = patched_copy(model, rank=reduced_rank(arch))
    x = inputs(arch)
    with torch.no_grad():
        ref = model(**x, output_attentions=True)
        out = patched(**x, output_attentions=True)
    maps = list(_attention_maps(out))
    assert maps
    for (key, r), (_, o) in zip(_attention_maps(ref), maps):
        assert o.shape == r.shape, key
        assert o.shape[1] == 4  # every tiny config has 4 query heads


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_parameter_count_closed_form(arch):
    model = build(arch)
    before = sum(p.numel() for p in model.parameters())
    expected_saving = 0
    plans = []
    for _, m, layout in fnl_attention_modules(model):
        d_h = hf_fnl.patch._get(m, layout.head_size_attrs[0])
        plans.append((m, layout, d_h))
    rank = reduced_rank(arch)
    for m, layout, d_h in plans:
        r = d_h if rank == 1.0 else d_h // 2
        q, k, v, o = (m.get_submodule(getattr(layout, s).path) for s in ("query", "key", "value", "output"))
        d = 32
        H, G = 4, (2 if arch.model_type in ROPE_TYPES else 4)
        has_bias = lambda mod: mod.bias is not None  # noqa: E731
        saved_per_rank = (H * (d + has_bias(q)) + G * (d + has_bias(k)) + G * (d + has_bias(v)) + H * d)
        if arch.model_type in ROPE_TYPES:
            saved_per_rank = 0
        expected_saving += (d_h - r) * saved_per_rank
    patched = hf_fnl.fnl_patch(model, rank=rank, progress=False)
    after = sum(p.numel() for p in patched.parameters())
    assert before - after == expected_saving
    if arch.model_type not in ROPE_TYPES:
        assert expected_saving > 0


def test_bert_base_halved_parameter_count():
    """The paper's halved-MHA BERT-base: 109,482,240 → 95,312,640 parameters (BertModel, with pooler)."""
    import transformers as tf

    model = tf.BertModel(tf.BertConfig())
    assert sum(p.numel() for p in model.parameters()) == 109_482_240
    hf_fnl.fnl_patch(model, rank=0.5, progress=False)
    assert sum(p.numel() for p in model.parameters()) == 109_482_240 - 12 * (4 * 768 * 384 + 3 * 384)


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_bf16_model_patches_and_stays_bf16(arch):
    model = build(arch, dtype=torch.bfloat16)
    ref32 = hf_fnl.fnl_patch(build(arch), rank=reduced_rank(arch), progress=False)
    patched = hf_fnl.fnl_patch(model, rank=reduced_rank(arch), progress=False)
    assert {p.dtype for p in patched.parameters()} == {torch.bfloat16}
    x = inputs(arch)
    with torch.no_grad():
        out = patched(**x).last_hidden_state
        ref = ref32(**x).last_hidden_state
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # bf16 weights hold ~3 significant digits; the SVD ran in float32, so the patch adds no more than that
    assert max_diff(out.float(), ref) <= 0.1 * ref.abs().max().item()


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_default_init_uses_the_layers_own_init(arch):
    model = build(arch)
    patched = patched_copy(model, rank=reduced_rank(arch), init="default")
    x = inputs(arch)
    with torch.no_grad():
        out = patched(**x)
    assert torch.isfinite(out[0]).all()
    for (_, m0, layout), (_, m1, _) in zip(fnl_attention_modules(model), fnl_attention_modules(patched)):
        info = getattr(m1, PATCH_ATTR)
        for form, slots in (("qk", ("query", "key")), ("ov", ("value", "output"))):
            if form not in info.forms:
                continue
            for s in slots:
                w0 = hf_fnl.patch._slot(m0, getattr(layout, s))[0]
                w1 = hf_fnl.patch._slot(m1, getattr(layout, s))[0]
                assert 0.7 < (w1.std() / w0.std()).item() < 1.4, (s, w0.std(), w1.std())


def test_rescale_scaling_and_original_scaling():
    arch = tiny_arch("bert")
    model = build(arch)
    kept = patched_copy(model, rank=0.5)
    rescaled = patched_copy(model, rank=0.5, scaling="rescale")
    for (_, a, _), (_, b, _) in zip(fnl_attention_modules(kept), fnl_attention_modules(rescaled)):
        assert a.self.scaling == pytest.approx(8 ** -0.5)  # original d_h = 8
        assert b.self.scaling == pytest.approx(4 ** -0.5)  # the new rank 4
        assert a.self.attention_head_size == b.self.attention_head_size == 4
        assert a.self.all_head_size == 16


def test_target_modules_and_rank_pattern():
    arch = tiny_arch("bart")
    model = build(arch)
    patched = patched_copy(model, rank=0.5, target_modules=r".*decoder\.layers\.\d+\.(self_attn|encoder_attn)",
                           rank_pattern={r"layers\.0\.encoder_attn": 2})
    ranks = {n: getattr(m, PATCH_ATTR).rank for n, m, _ in fnl_attention_modules(patched) if hasattr(m, PATCH_ATTR)}
    assert ranks == {"decoder.layers.0.self_attn": 4, "decoder.layers.0.encoder_attn": 2,
                     "decoder.layers.1.self_attn": 4, "decoder.layers.1.encoder_attn": 4}
    spec = patched.config.fnl
    assert set(spec["modules"]) == set(ranks) and spec["modules"]["decoder.layers.0.encoder_attn"]["rank"] == 2
    listed = patched_copy(model, target_modules=["encoder_attn"])
    assert {n for n, m, _ in fnl_attention_modules(listed) if hasattr(m, PATCH_ATTR)} == {
        "decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"}


def test_gpt2_cross_attention_layout():
    import transformers as tf

    config = tf.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, add_cross_attention=True)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 99, (2, SEQ))
    enc = torch.randn(2, 5, 32)
    patched = patched_copy(model)
    with torch.no_grad():
        assert max_diff(model(ids, encoder_hidden_states=enc).logits, patched(ids, encoder_hidden_states=enc).logits) <= 1e-5
    names = {n for n, m, _ in fnl_attention_modules(patched)}
    assert "transformer.h.0.crossattention" in names and "transformer.h.0.attn" in names
    half = patched_copy(model, rank=0.5)
    with torch.no_grad():
        out = half(ids, encoder_hidden_states=enc, output_attentions=True)
    assert out.cross_attentions[0].shape == (2, 4, SEQ, 5)


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_sdpa_attention_at_full_and_half_rank(arch):
    model = build(arch, attn="sdpa")
    x = inputs(arch)
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        assert max_diff(patched_copy(model)(**x).last_hidden_state, ref) <= 1e-5
        eager = patched_copy(build(arch, attn="eager"), rank=reduced_rank(arch))(**x).last_hidden_state
        sdpa = patched_copy(model, rank=reduced_rank(arch))(**x).last_hidden_state
    assert max_diff(sdpa, eager) <= 1e-5  # the narrower heads go through SDPA like through eager
