"""Tiny models of every supported architecture, built from configs (no Hub), and their inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers as tf

VOCAB = 99
SEQ = 9


@dataclass(frozen=True)
class TinyArch:
    model_type: str
    make_config: callable
    auto_classes: tuple[str, ...]  # transformers Auto* class names that build a head for this config
    kind: str  # "encoder", "decoder", "seq2seq" or "vision"


def _common(**kw):
    return dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def _bert_like(cls, **kw):
    return lambda: cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64, **_common(**kw))


def _bart_like(cls, **kw):
    return lambda: cls(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                       decoder_ffn_dim=37, max_position_embeddings=64, decoder_start_token_id=2, **_common(**kw))


def _t5_like(cls):
    return lambda: cls(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                       num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                       pad_token_id=0, eos_token_id=1)


def _llama_like(cls, **kw):
    return lambda: cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **_common(**kw))


ENC = ("AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification")
S2S = ("AutoModel", "AutoModelForSeq2SeqLM")
DEC = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")

TINY_ARCHS = [
    TinyArch("bert", _bert_like(tf.BertConfig), ENC, "encoder"),
    TinyArch("roberta", _bert_like(tf.RobertaConfig), ENC, "encoder"),
    TinyArch("xlm-roberta", _bert_like(tf.XLMRobertaConfig), ENC, "encoder"),
    TinyArch("electra", _bert_like(tf.ElectraConfig, embedding_size=32), ENC, "encoder"),
    TinyArch("camembert", _bert_like(tf.CamembertConfig), ENC, "encoder"),
    TinyArch("distilbert", lambda: tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                                      max_position_embeddings=64, pad_token_id=0), ENC, "encoder"),
    TinyArch("bart", _bart_like(tf.BartConfig), S2S + ("AutoModelForSequenceClassification",), "seq2seq"),
    TinyArch("mbart", _bart_like(tf.MBartConfig), S2S + ("AutoModelForSequenceClassification",), "seq2seq"),
    TinyArch("marian", _bart_like(tf.MarianConfig, decoder_vocab_size=VOCAB), S2S, "seq2seq"),
    TinyArch("m2m_100", _bart_like(tf.M2M100Config, encoder_layerdrop=0.0, decoder_layerdrop=0.0), S2S, "seq2seq"),
    TinyArch("t5", _t5_like(tf.T5Config), S2S, "seq2seq"),
    TinyArch("mt5", _t5_like(tf.MT5Config), S2S, "seq2seq"),
    TinyArch("gpt2", lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                           **_common()), DEC, "decoder"),
    TinyArch("vit", lambda: tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=37, num_labels=3),
             ("AutoModel", "AutoModelForImageClassification"), "vision"),
    TinyArch("llama", _llama_like(tf.LlamaConfig, attention_bias=True), DEC, "decoder"),
    TinyArch("mistral", _llama_like(tf.MistralConfig), DEC, "decoder"),
    TinyArch("qwen2", _llama_like(tf.Qwen2Config), DEC, "decoder"),
]
ARCH_IDS = [a.model_type for a in TINY_ARCHS]
ROPE_TYPES = {"llama", "mistral", "qwen2"}


def tiny_arch(model_type: str) -> TinyArch:
    return TINY_ARCHS[ARCH_IDS.index(model_type)]


def reduced_rank(arch: TinyArch) -> float:
    """The rank each architecture is tested at: half the head size, full where RoPE forbids less."""
    return 1.0 if arch.model_type in ROPE_TYPES else 0.5


def build(arch: TinyArch, auto_class: str = "AutoModel", dtype=torch.float32, attn="eager", seed=0):
    config = arch.make_config()
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = getattr(tf, auto_class).from_config(config)
    return model.to(dtype).eval()


def inputs(arch: TinyArch, masked: bool = True, batch: int = 2, seed: int = 1, auto_class: str = "AutoModel") -> dict:
    g = torch.Generator().manual_seed(seed)
    if arch.kind == "vision":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(3, VOCAB, (batch, SEQ), generator=g)
    out = {"input_ids": ids}
    if masked:
        mask = torch.ones_like(ids)
        mask[-1, SEQ - 3:] = 0  # right padding on the last row
        out["attention_mask"] = mask
    if arch.kind == "seq2seq" and auto_class == "AutoModelForSequenceClassification":
        ids[:, -1] = 2  # BART-style classification reads the hidden state at the (single) eos token
    elif arch.kind == "seq2seq":
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 5), generator=g)
    return out
