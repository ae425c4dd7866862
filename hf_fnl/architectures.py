"""One table of per-architecture facts: where the attention projections live and which attributes
hold the head size. Adding an architecture is adding a row to ARCHITECTURES.

Facts checked against transformers 5.17-5.23: every attention module views its projections as
(…, -1, head_size) and passes `scaling` explicitly to the attention function, so narrower
projections plus an updated head-size attribute keep the stock forward, KV cache and SDPA working.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Projection", "AttentionLayout", "Architecture", "ARCHITECTURES", "architecture_for", "supported_model_types"]


@dataclass(frozen=True)
class Projection:
    """A projection inside an attention module, by dotted path relative to that module.

    Fused projections (GPT-2's `c_attn`) hold `chunks` outputs side by side; `chunk` picks one.
    """

    path: str
    chunk: int = 0
    chunks: int = 1


@dataclass(frozen=True)
class AttentionLayout:
    """How one kind of attention module is laid out."""

    query: Projection
    key: Projection
    value: Projection
    output: Projection
    head_size_attrs: tuple[str, ...]  # set to the new rank r (the first one is read as d_h)
    width_attrs: tuple[str, ...] = ()  # set to heads · r
    scaling_attr: str = "scaling"


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    layouts: tuple[AttentionLayout, ...]  # tried in order; the first whose projections all exist wins
    rope: bool = False  # rotary embeddings rotate the QK head basis: the QK form is not a fixed bilinear form
    head_size_config: str | None = None  # config field that sets the head size, if any (export_vanilla)


def _separate(q: str, k: str, v: str, o: str, head_size_attrs, width_attrs=(), scaling_attr="scaling"):
    return AttentionLayout(
        Projection(q), Projection(k), Projection(v), Projection(o),
        tuple(head_size_attrs), tuple(width_attrs), scaling_attr,
    )


_PROJ = ("q_proj", "k_proj", "v_proj")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "BERT family",
        ("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        (_separate("self.query", "self.key", "self.value", "output.dense",
                   ["self.attention_head_size"], ["self.all_head_size"], "self.scaling"),),
    ),
    Architecture(
        "DistilBERT",
        ("distilbert",),
        (_separate("q_lin", "k_lin", "v_lin", "out_lin", ["attention_head_size"]),),
    ),
    Architecture(
        "BART family (self and cross attention)",
        ("bart", "mbart", "marian", "m2m_100"),
        (_separate(*_PROJ, "out_proj", ["head_dim"]),),
    ),
    Architecture(
        "T5 (self and cross attention; scaling 1.0)",
        ("t5", "mt5"),
        (_separate("q", "k", "v", "o", ["key_value_proj_dim"], ["inner_dim"]),),
        head_size_config="d_kv",
    ),
    Architecture(
        "GPT-2 (fused Conv1D c_attn)",
        ("gpt2",),
        (
            # cross-attention: query from q_attn, key and value fused in c_attn
            AttentionLayout(Projection("q_attn"), Projection("c_attn", 0, 2), Projection("c_attn", 1, 2),
                            Projection("c_proj"), ("head_dim",), ("split_size",)),
            AttentionLayout(Projection("c_attn", 0, 3), Projection("c_attn", 1, 3), Projection("c_attn", 2, 3),
                            Projection("c_proj"), ("head_dim",), ("split_size",)),
        ),
    ),
    Architecture(
        "ViT",
        ("vit",),
        (_separate(*_PROJ, "o_proj", ["head_dim"]),),
        head_size_config="head_dim",
    ),
    Architecture(
        "Llama family (RoPE, grouped-query attention)",
        ("llama", "mistral", "qwen2"),
        (_separate(*_PROJ, "o_proj", ["head_dim"]),),
        rope=True,
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for arch in ARCHITECTURES for t in arch.model_types)


def architecture_for(model_type: str | None) -> Architecture:
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise NotImplementedError(
        f"hf_fnl does not support model_type {model_type!r}. Supported: {', '.join(supported_model_types())}. "
        "To add one, add a row to hf_fnl.architectures.ARCHITECTURES naming its attention projections "
        "and head-size attributes (see the rows there), then run the architecture tests for it."
    )
