"""Bad input gets a clear error that says what to do, and leaves the model as it was."""

import copy

import pytest
import torch
import transformers as tf

import hf_fnl

from .tiny_models import build, tiny_arch

BERT = tiny_arch("bert")
LLAMA = tiny_arch("llama")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_architecture_lists_supported_ones_and_how_to_add():
    model = tf.OPTModel(tf.OPTConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, ffn_dim=37,
                                     num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32))
    with pytest.raises(NotImplementedError, match=r"'opt'.*Supported: .*bert.*gpt2.*llama.*add a row"):
        hf_fnl.fnl_patch(model)


@pytest.mark.parametrize("rank,match", [
    (0, "must be > 0"), (-0.5, "must be > 0"), (1.5, r"fraction of the head size and must be in \(0, 1\]"),
    (9, "above the head size 8"), (True, "must be an int"), ("half", "must be an int"),
])
def test_rank_out_of_range(rank, match):
    model = build(BERT)
    before = state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        hf_fnl.fnl_patch(model, rank=rank)
    assert unchanged(model, before) and not hf_fnl.is_fnl_patched(model)


def test_bad_rank_in_rank_pattern_for_one_layer_changes_nothing():
    model = build(BERT)
    before = state(model)
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention: rank 12 is above the head size 8"):
        hf_fnl.fnl_patch(model, rank=0.5, rank_pattern={r"layer\.1\.": 12})
    assert unchanged(model, before) and not hf_fnl.is_fnl_patched(model)


def test_patching_twice():
    model = hf_fnl.fnl_patch(build(BERT), rank=0.5, progress=False)
    with pytest.raises(RuntimeError, match="already patched.*fnl_merge"):
        hf_fnl.fnl_patch(model, rank=0.5)


def test_unequal_qk_ov_ranks_under_the_stock_forward():
    with pytest.raises(ValueError, match=r"one head size.*forms=\('qk', 'ov'\)"):
        hf_fnl.fnl_patch(build(BERT), rank=0.5, forms=("ov",))


def test_single_form_at_full_rank_is_allowed():
    model = build(BERT)
    patched = hf_fnl.fnl_patch(copy.deepcopy(model), forms=("ov",), progress=False)
    assert {p.form for p in hf_fnl.fnl_factor_pairs(patched)} == {"ov"}
    x = torch.randint(3, 99, (2, 7))
    with torch.no_grad():
        assert (model(x).last_hidden_state - patched(x).last_hidden_state).abs().max() <= 1e-5


def test_rope_refuses_reduced_rank():
    model = build(LLAMA)
    before = state(model)
    with pytest.raises(ValueError, match="rotary position embeddings.*rank=1.0"):
        hf_fnl.fnl_patch(model, rank=0.5)
    with pytest.raises(ValueError, match="rotary position embeddings.*forms=\\('ov',\\)"):
        hf_fnl.fnl_patch(model, forms=("qk",))
    assert unchanged(model, before)


def test_meta_weights_with_spectral_init():
    with torch.device("meta"):
        model = tf.BertModel(BERT.make_config())
    with pytest.raises(ValueError, match="meta device.*init='default'"):
        hf_fnl.fnl_patch(model, rank=0.5)
    patched = hf_fnl.fnl_patch(model, rank=0.5, init="default", progress=False)
    assert patched.encoder.layer[0].attention.self.query.weight.shape == (16, 32)


@pytest.mark.parametrize("kw,match", [
    (dict(forms=("qk", "xy")), "forms must be"), (dict(forms=()), "forms must be"),
    (dict(init="svd"), "init must be"), (dict(scaling="none"), "scaling must be"),
    (dict(rank_pattern={"layer": 0}), "rank_pattern"),
])
def test_bad_config_values(kw, match):
    with pytest.raises(ValueError, match=match):
        hf_fnl.FNLConfig(**kw)


def test_no_module_matched():
    with pytest.raises(ValueError, match="no attention module.*target_modules='nothing'"):
        hf_fnl.fnl_patch(build(BERT), target_modules="nothing")


def test_summary_of_unpatched_model():
    with pytest.raises(ValueError, match="not patched"):
        hf_fnl.fnl_summary(build(BERT))
