"""Rebuild an hf-fnl patched structure with torch and transformers alone.

A self-contained export copies hf_fnl/layers.py and this file next to the weights as
modeling_fnl.py (relative imports removed), with subclasses of the saved model classes appended,
so that `AutoModel…from_pretrained(dir, trust_remote_code=True)` loads the checkpoint where hf_fnl
is not installed. So this file imports nothing from hf_fnl but the layer classes. The saved spec
(config.fnl) carries each module's layout, so no architecture table is needed here.
"""

import functools

from torch import nn
from transformers.pytorch_utils import Conv1D

from .layers import FactorizedConv2d, FactorizedLayer, FactorizedLinear


def name_aliases(name: str, prefix: str) -> tuple:
    """A module name as saved, without and with the base_model_prefix: a task model's checkpoint
    loaded into its base model, or the reverse."""
    return (name, name.removeprefix(prefix + "."), f"{prefix}.{name}") if prefix else (name,)


def _get(obj, dotted):
    return functools.reduce(getattr, dotted.split("."), obj)


def _set(obj, dotted, value):
    parent, _, last = dotted.rpartition(".")
    setattr(_get(obj, parent) if parent else obj, last, value)


def _empty_projection(old, in_features, out_features):
    """A projection of old's type, device and dtype with uninitialized weights of a new shape."""
    has_bias = old.bias is not None
    factory = dict(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(old, Conv1D):
        new = Conv1D(out_features, in_features).to(**factory)
    else:
        new = nn.Linear(in_features, out_features, bias=has_bias, **factory)
    return new


def apply_layer_spec(model, layers, prefix):
    """Rebuild the factorized layers a saved spec describes (shapes only: a checkpoint fills them).
    Returns the number of layers replaced now."""
    modules = dict(model.named_modules())
    rebuilt = 0
    for saved, entry in layers.items():
        name = next((n for n in name_aliases(saved, prefix) if n in modules), None)
        if name is None or isinstance(modules[name], FactorizedLayer):
            continue
        old = modules[name]
        factory = dict(device=old.weight.device, dtype=old.weight.dtype)
        if entry["kind"] == "conv2d":
            new = FactorizedConv2d(entry["in_channels"], entry["out_channels"], entry["kernel_size"], entry["rank"],
                                   entry["stride"], entry["padding"], entry["dilation"], entry["bias"], entry["inner"], **factory)
        else:
            new = FactorizedLinear(entry["in_features"], entry["out_features"], entry["rank"], entry["bias"],
                                   entry["inner"], **factory)
        new.si_error, new.params_before = entry.get("si_error"), entry.get("params_before")
        _set(model, name, new)
        rebuilt += 1
    return rebuilt


def restructure(model, spec):
    """Give every module named in spec["modules"] its patched projection shapes and head size, and
    every layer in spec["layers"] its factorized form.

    Names are matched as saved or with the model's base_model_prefix removed or added."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    apply_layer_spec(model, spec.get("layers") or {}, prefix)
    names = dict(model.named_modules())
    for saved_name, entry in spec["modules"].items():
        name = next((n for n in name_aliases(saved_name, prefix) if n in names), None)
        if name is None or getattr(names[name], "_fnl_restructured", False):
            continue
        module, layout, r = names[name], entry["layout"], entry["rank"]
        widths = {"query": entry["heads"] * r, "key": entry["kv_heads"] * r, "value": entry["kv_heads"] * r}
        patched = {s for f in entry["forms"] for s in {"qk": ("query", "key"), "ov": ("value", "output")}[f]}
        for path in {layout[s][0] for s in patched}:
            old = module.get_submodule(path)
            out_features, in_features = old.weight.shape[::-1] if isinstance(old, Conv1D) else old.weight.shape
            if path == layout["output"][0]:
                in_features = entry["heads"] * r
            else:
                chunks = [s for s in ("query", "key", "value") if layout[s][0] == path]
                chunk_width = out_features // layout[chunks[0]][2]
                out_features = sum(widths[s] if s in patched else chunk_width for s in chunks)
            _set(module, path, _empty_projection(old, in_features, out_features))
        for attr in layout["head_size_attrs"]:
            _set(module, attr, r)
        for attr in layout["width_attrs"]:
            _set(module, attr, entry["heads"] * r)
        if spec.get("scaling") == "rescale":
            _set(module, layout["scaling_attr"], _get(module, layout["scaling_attr"]) * (entry["head_dim"] / r) ** 0.5)
        module._fnl_restructured = True
