"""Patched models travel like any other: save, reload exactly, merge back, model card, push.

`model.save_pretrained(dir)` of a patched model writes safetensors weights and config.json with the
patch spec under "fnl". Reloading rebuilds the patched structure before the weights are read:
importing hf_fnl wraps `PreTrainedModel.post_init` so that a model built from a config that
carries an "fnl" section gets the patched projection shapes (no SVD, no random values that
matter: the checkpoint fills them). transformers' own `from_pretrained`, Auto classes included,
then loads the weights as usual (sharding, dtype, tied weights, device maps). Plain transformers
without hf_fnl fails on such a checkpoint with a size-mismatch error, never loading it silently.

transformers.monkey_patching (5.x) swaps whole classes by name for every model loaded; a patch
spec is per checkpoint and per module (ranks differ per layer), so the post_init hook is the
narrower mechanism.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import tempfile
from typing import Any

import torch
from torch import nn

from . import __version__
from .layers import FactorizedLayer
from .patch import CONFIG_ATTR, PATCH_ATTR, _get, _set, _slot, apply_fnl_spec, install_slots, set_head_size
from .summary import fnl_summary

__all__ = ["from_pretrained", "fnl_merge", "export_vanilla", "fnl_model_card", "fnl_push_to_hub", "install_load_hook", "save_self_contained",
           "save_with_card"]

_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")


def install_load_hook() -> None:
    """Make every PreTrainedModel built from a config with an "fnl" section take the patched shapes.

    Runs once at `import hf_fnl`; a no-op for every other model."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.post_init
    if getattr(original, "_hf_fnl_hook", False):
        return

    @functools.wraps(original)
    def post_init(self):
        spec = getattr(self.config, CONFIG_ATTR, None)
        if isinstance(spec, dict) and (spec.get("modules") or spec.get("layers")):
            apply_fnl_spec(self, spec)  # before post_init, so its weight init and tying see the final shapes
        original(self)

    post_init._hf_fnl_hook = True
    PreTrainedModel.post_init = post_init


def from_pretrained(path_or_id: str, model_class: Any = None, *, allow_pickle: bool = False, **kwargs) -> nn.Module:
    """Load a model saved after `fnl_patch`, exactly: no SVD redone, no random init.

    model_class: a transformers class or Auto class (default: the saved `architectures[0]`).
    Weights load only from safetensors unless `allow_pickle=True` (pickle runs code on load).
    Other keyword arguments go to the class's `from_pretrained` (dtype, device_map, revision, …).
    """
    import transformers
    from transformers import PretrainedConfig

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config_dict, _ = PretrainedConfig.get_config_dict(path_or_id, **hub_kwargs)
    spec = config_dict.get(CONFIG_ATTR)
    if not spec:
        raise ValueError(f"{path_or_id} has no '{CONFIG_ATTR}' section in config.json: it was not saved after "
                         "hf_fnl.fnl_patch. Load it with transformers' from_pretrained.")
    if kwargs.get("use_safetensors") is False and not allow_pickle:
        raise ValueError("use_safetensors=False loads pickle weights, which can run code: pass allow_pickle=True "
                         "to opt in explicitly")
    kwargs.setdefault("use_safetensors", not allow_pickle or None)
    if model_class is None:
        names = config_dict.get("architectures") or []
        model_class = getattr(transformers, names[0], None) if names else None
        model_class = model_class or transformers.AutoModel
    model = model_class.from_pretrained(path_or_id, **kwargs)
    found = (sum(hasattr(m, PATCH_ATTR) for m in model.modules()), sum(isinstance(m, FactorizedLayer) for m in model.modules()))
    expected = (len(spec.get("modules") or {}), len(spec.get("layers") or {}))
    if found != expected:
        raise RuntimeError(
            f"{type(model).__name__} has {found[0]} patched attention modules and {found[1]} factorized layers but the "
            f"checkpoint describes {expected[0]} and {expected[1]}: load it with the class it was saved from "
            f"({config_dict.get('architectures')})"
        )
    return model


# --------------------------------------------------------------------------- merge


def _pad_heads(W: torch.Tensor, heads: int, rank: int, head_dim: int, dim: int) -> torch.Tensor:
    """Zero-pad each head's block of `rank` rows (dim 0) or columns (dim 1) to `head_dim`."""
    blocks = W.unflatten(dim, (heads, rank))
    pad = list(blocks.shape)
    pad[dim + 1] = head_dim - rank
    return torch.cat([blocks, blocks.new_zeros(pad)], dim=dim + 1).flatten(dim, dim + 1)


@torch.no_grad()
def fnl_merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Multiply the factors back: a vanilla model of the original architecture, same outputs.

    Factorized Linear/Conv2d layers (low-rank or overcomplete: full, deep U M Vᵀ, wide) become one
    dense layer holding the product: the teacher-free distillation path of the paper.
    Each head's rank-r factors become head_dim-wide projections whose extra rows/columns are zero,
    so every per-head product Q_h K_hᵀ and V_h O_hᵀ is unchanged, and the head-size attributes and
    softmax scaling return to the original (a rescaled temperature is moved into the query). The
    result saves and loads with plain transformers.
    """
    spec = getattr(model.config, CONFIG_ATTR, None)
    if spec is None:
        raise ValueError("this model is not patched by hf_fnl: there is nothing to merge")
    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, FactorizedLayer):  # U (M) Vᵀ multiplied back into one dense layer
            _set(model, name, module.to_dense())
    for module in model.modules():
        info = getattr(module, PATCH_ATTR, None)
        if info is None:
            continue
        L, r, d_h = info.layout, info.rank, info.head_dim
        new = {}
        for slot, groups in (("query", info.heads), ("key", info.kv_heads), ("value", info.kv_heads)):
            W, b = _slot(module, getattr(L, slot))
            new[slot] = (_pad_heads(W, groups, r, d_h, 0), None if b is None else _pad_heads(b, groups, r, d_h, 0))
        W, b = _slot(module, L.output)
        new["output"] = (_pad_heads(W, info.heads, r, d_h, 1), b)
        if spec.get("scaling") == "rescale":  # logits = s_r q·k = s_orig (√(d_h/r) q)·k
            factor = (d_h / r) ** 0.5
            new["query"] = tuple(None if t is None else t * factor for t in new["query"])
            _set(module, L.scaling_attr, _get(module, L.scaling_attr) / factor)
        install_slots(module, L, new, set(new))
        set_head_size(module, L, d_h, info.heads)
        delattr(module, PATCH_ATTR)
    delattr(model.config, CONFIG_ATTR)
    return model


@torch.no_grad()
def export_vanilla(model: nn.Module) -> nn.Module:
    """A vanilla transformers model whose config states the reduced head size (T5's d_kv, ViT's
    head_dim): the rank-r model without hf_fnl and without zero padding, same outputs. Needs one
    rank for every attention module, all patched; other architectures: use fnl_merge."""
    from .architectures import architecture_for
    from .patch import fnl_attention_modules

    spec = getattr(model.config, CONFIG_ATTR, None)
    if spec is None:
        raise ValueError("this model is not patched by hf_fnl: there is nothing to export")
    if spec.get("layers"):
        raise ValueError("export_vanilla keeps factorized attention only; this model has factorized layers: "
                         "use hf_fnl.fnl_merge")
    field = architecture_for(model.config.model_type).head_size_config
    if field is None:
        raise ValueError(f"{model.config.model_type} configs cannot state a head size apart from hidden_size/heads; "
                         "use hf_fnl.fnl_merge for a vanilla model (zero-padded heads, same outputs)")
    attention = fnl_attention_modules(model)
    ranks = {getattr(m, PATCH_ATTR).rank for _, m, _ in attention if hasattr(m, PATCH_ATTR)}
    if len(ranks) != 1 or not all(hasattr(m, PATCH_ATTR) for _, m, _ in attention):
        raise ValueError(f"export_vanilla needs every attention module patched at one rank (found ranks {sorted(ranks)}); "
                         "use hf_fnl.fnl_merge instead")
    config = copy.deepcopy(model.config)
    delattr(config, CONFIG_ATTR)
    setattr(config, field, ranks.pop())
    vanilla = type(model)(config).to(next(model.parameters()).dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, module, layout in attention:
        # vanilla computes softmax(s_v q·k), the patched model s_p q·k: fold s_p/s_v into the query projection
        factor = _get(module, layout.scaling_attr) / _get(vanilla.get_submodule(name), layout.scaling_attr)
        for key in (f"{name}.{layout.query.path}.weight", f"{name}.{layout.query.path}.bias"):
            if factor != 1.0 and key in state:
                state[key] *= factor
    vanilla.load_state_dict(state)
    return vanilla.train(model.training)


# --------------------------------------------------------------------------- self-contained export

_AUTO_MAPPINGS = {  # Auto class → the name table transformers keeps for it
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def _without_package_imports(module) -> str:
    """A module's source with its module-level imports from hf_fnl (and __future__) removed: the
    exported file holds every name they bring."""
    lines = inspect.getsource(module).splitlines()
    return "\n".join(line for line in lines if not line.startswith(("from .", "from __future__")))


def save_self_contained(model: nn.Module, directory: str, **card_kwargs) -> None:
    """Save a patched model so that transformers alone loads it:
    `AutoModel….from_pretrained(directory, trust_remote_code=True)` on a machine without hf_fnl.

    Writes the weights, the card, modeling_fnl.py (hf_fnl/standalone.py plus subclasses of the
    saved class and of its base model whose post_init rebuilds the patched shapes; layers.py goes
    first, for factorized Linear/Conv2d layers) and an
    `auto_map` in config.json pointing the matching Auto classes at them."""
    import json

    from transformers.models.auto import modeling_auto

    from . import layers, standalone

    model_type = model.config.model_type
    classes = {type(model).__name__}
    base = getattr(modeling_auto, "MODEL_MAPPING_NAMES", {}).get(model_type)
    if isinstance(base, str):
        classes.add(base)
    auto_map = {}
    for auto, table in _AUTO_MAPPINGS.items():
        name = getattr(modeling_auto, table, {}).get(model_type)
        if name in classes:
            auto_map[auto] = f"modeling_fnl.FNL{name}"
    code = ["from __future__ import annotations", "", *map(_without_package_imports, (layers, standalone)),
            "", "import transformers", ""]
    for name in sorted(classes):
        code += [f"class FNL{name}(transformers.{name}):",
                 "    def post_init(self):",
                 "        restructure(self, self.config.fnl)  # before post_init: weight init and tying see the final shapes",
                 "        super().post_init()", "", ""]
    save_with_card(model, directory, **card_kwargs)
    with open(os.path.join(directory, "modeling_fnl.py"), "w") as f:
        f.write("\n".join(code))
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["auto_map"] = auto_map
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


# --------------------------------------------------------------------------- model card and push


def fnl_model_card(model: nn.Module, base_model: str | None = None, command: str | None = None,
                   fd_settings: dict | None = None, eval_results: dict | None = None) -> str:
    """README.md for the Hub: metadata, the patch (ranks, parameters before/after), FD settings,
    the command that produced it, evaluation results when given."""
    summary = fnl_summary(model)
    spec = getattr(model.config, CONFIG_ATTR)
    ranks = sorted({(r.rank, r.head_dim) for r in summary.rows})
    meta = ["---", "library_name: transformers", "tags:", "- hf-fnl", "- factorized-attention", "- spectral-initialization"]
    if base_model:
        meta.append(f"base_model: {base_model}")
    meta.append("---")
    lines = [
        *meta, "",
        f"# {getattr(model.config, 'model_type', 'model')} with factorized attention (hf-fnl {__version__})", "",
        "Every attention head's Query-Key and Output-Value forms were replaced by explicit factor pairs by "
        "spectral initialization (Khodak et al., *Initialization and Regularization of Factorized Neural "
        "Layers*, ICLR 2021).", "",
        "**Loading needs hf-fnl**: `pip install hf-fnl`, then `hf_fnl.from_pretrained(repo_id)` (or "
        "transformers' `from_pretrained` after `import hf_fnl`). Plain transformers fails on it with a size "
        "mismatch. `hf_fnl.fnl_merge(model)` gives a vanilla transformers model with the same outputs.", "",
        "| | |", "|---|---|",
        f"| base model | {base_model or 'n/a'} |",
        f"| forms | {', '.join(spec['forms'])} |",
        f"| per-head rank / head size | {', '.join(f'{r}/{d}' for r, d in ranks)} |",
        f"| patched attention modules | {len(spec['modules'])} |",
        f"| parameters before | {summary.model_params_before:,} |",
        f"| parameters after | {summary.model_params_after:,} ({summary.model_params_after / summary.model_params_before:.1%}) |",
        f"| init | {spec['init']} |",
        f"| softmax scaling | {spec['scaling']} |",
    ]
    if fd_settings:
        lines += [f"| {k} | {v} |" for k, v in fd_settings.items()]
    if command:
        lines += ["", "## How it was made", "", "```bash", command, "```"]
    if eval_results:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in eval_results.items()]]
    lines += ["", "## Patch summary", "", "```", summary.table(), "```", ""]
    return "\n".join(lines)


def save_with_card(model: nn.Module, directory: str, **card_kwargs) -> None:
    """save_pretrained (safetensors) plus the model card as README.md."""
    model.save_pretrained(directory, safe_serialization=True)
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(fnl_model_card(model, **card_kwargs))


def fnl_push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload model factorized with hf-fnl", api=None, **card_kwargs) -> Any:
    """Save the model with its card into a temporary folder and upload it through huggingface_hub.

    `api` defaults to `huggingface_hub.HfApi(token=token)`; card_kwargs go to `fnl_model_card`.
    Offline (HF_HUB_OFFLINE=1) huggingface_hub raises its own error at once."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_with_card(model, folder, **card_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)

