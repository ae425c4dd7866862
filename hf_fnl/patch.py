"""fnl_patch: turn a transformers model's attention into explicit per-head QK and OV factor pairs.

Per head h the attention is softmax(x Q_h K_hᵀ xᵀ · scaling) x V_h O_hᵀ. The patch replaces the
four projections by narrower ones whose per-head blocks are the SI factors of the products
Q_h K_hᵀ and V_h O_hᵀ at rank r, and sets the module's head-size attribute to r; the head count,
the stock forward, the KV cache and the attention kernels stay as they are.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from . import __version__
from .blocks import BlockLayout
from .architectures import Architecture, AttentionLayout, Projection, architecture_for
from .config import FNLConfig, resolve_rank
from .factorize import augment_with_bias, relative_tail_error, spectral_product_factors
from .layer_patch import fnl_factorize_layers
from .layers import FactorizedLayer
from .standalone import _get, _set, apply_layer_spec, name_aliases

__all__ = ["fnl_patch", "is_fnl_patched", "fnl_factor_pairs", "fnl_attention_modules", "AttentionPatch", "FactorPair", "HeadBlocks"]

PATCH_ATTR = "fnl_attention"  # set on every patched attention module
CONFIG_ATTR = "fnl"  # namespaced section of model.config holding the patch spec
_SLOTS = ("query", "key", "value", "output")
_FORM_SLOTS = {"qk": ("query", "key"), "ov": ("value", "output")}


@dataclass
class AttentionPatch:
    """What fnl_patch did to one attention module (kept on the module as `fnl_attention`)."""

    name: str
    layout: AttentionLayout
    forms: tuple[str, ...]
    head_dim: int  # the original per-head size d_h
    rank: int
    heads: int
    kv_heads: int
    si_error: dict[str, float] = field(default_factory=dict)  # ‖W − W_r‖_F / ‖W‖_F per form (spectral init)
    params_before: dict[str, int] = field(default_factory=dict)  # per form, weights and biases of its projections


# --------------------------------------------------------------------------- projections


def _weight_oi(projection: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), a view; GPT-2's Conv1D stores it transposed."""
    return projection.weight.t() if isinstance(projection, Conv1D) else projection.weight


def _slot(attention: nn.Module, proj: Projection) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias) of one projection, the chunk of a fused one."""
    module = attention.get_submodule(proj.path)
    W = _weight_oi(module)
    width = W.shape[0] // proj.chunks
    rows = slice(proj.chunk * width, (proj.chunk + 1) * width)
    return W[rows], (module.bias[rows] if module.bias is not None else None)


def _slot_params(W: torch.Tensor, bias: torch.Tensor | None) -> int:
    return W.numel() + (bias.numel() if bias is not None else 0)


def _new_projection(old: nn.Module, W: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A projection of `old`'s type holding W (out, in) and bias, without a throwaway random init."""
    out_features, in_features = W.shape
    with torch.device("meta"):
        new = Conv1D(out_features, in_features) if isinstance(old, Conv1D) else nn.Linear(in_features, out_features, bias=bias is not None)
    weight = W.t() if isinstance(old, Conv1D) else W
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=old.weight.requires_grad)
    new.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=old.bias.requires_grad)
    return new


# --------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    name: str
    module: nn.Module
    layout: AttentionLayout
    head_dim: int
    rank: int
    heads: int
    kv_heads: int
    forms: tuple[str, ...]  # the forms this module gets (RoPE models: OV only)


def _layout_of(arch: Architecture, module: nn.Module) -> AttentionLayout | None:
    for layout in arch.layouts:
        paths = {getattr(layout, s).path for s in _SLOTS}
        try:
            if all(isinstance(module.get_submodule(p), (nn.Linear, Conv1D)) for p in paths):
                return layout
        except AttributeError:
            continue
    return None


def fnl_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, AttentionLayout]]:
    """Every attention module of a supported model, with its layout, in module order."""
    arch = architecture_for(getattr(model.config, "model_type", None))
    found = []
    for name, module in model.named_modules():
        layout = _layout_of(arch, module)
        if layout is not None and not any(name.startswith(prefix + ".") for prefix, _, _ in found):
            found.append((name, module, layout))
    return found


def _plan(model: nn.Module, arch: Architecture, config: FNLConfig) -> list[_Plan]:
    return [
        _plan_module(arch, name, module, layout, config.rank_for(name), config.forms)
        for name, module, layout in fnl_attention_modules(model)
        if config.targets(name)
    ]


def _plan_module(arch: Architecture, name: str, module: nn.Module, layout: AttentionLayout,
                 rank_spec: int | float, config_forms: tuple[str, ...]) -> _Plan:
    """Validate one module's patch (raises with what to do) and fix its rank, heads and forms."""
    head_dim = int(_get(module, layout.head_size_attrs[0]))
    Wq, _ = _slot(module, layout.query)
    Wk, _ = _slot(module, layout.key)
    Wv, _ = _slot(module, layout.value)
    Wo, _ = _slot(module, layout.output)
    heads, kv_heads = Wq.shape[0] // head_dim, Wk.shape[0] // head_dim
    if Wq.shape[0] % head_dim or Wk.shape != Wv.shape or Wo.shape[1] != Wq.shape[0] or heads % kv_heads:
        raise RuntimeError(
            f"{name}: projection shapes q {tuple(Wq.shape)}, k {tuple(Wk.shape)}, v {tuple(Wv.shape)}, "
            f"o {tuple(Wo.shape)} do not fit head size {head_dim}; is the architecture row {arch.name!r} "
            "still right for this transformers version?"
        )
    rank = resolve_rank(rank_spec, head_dim, where=name)
    forms = tuple(f for f in config_forms if not (arch.rope and f == "qk"))
    if not forms:
        raise ValueError(
            f"{name}: {arch.name} applies rotary position embeddings to the query/key head basis, so its QK "
            "form is not a fixed bilinear form and is left as it is; forms=('qk',) leaves nothing to patch. "
            "Use forms=('ov',) or ('qk', 'ov')."
        )
    if rank < head_dim:
        if arch.rope:
            raise ValueError(
                f"{name}: {arch.name} applies rotary position embeddings to the query/key head basis, so a QK "
                f"rank below the head size ({rank} < {head_dim}) has no spectral meaning, and the stock forward "
                "needs one head size for QK and OV. Use rank=1.0 (full-rank factor pairs, e.g. for Frobenius "
                "decay on the OV forms)."
            )
        missing = [f for f in ("qk", "ov") if f not in config_forms]
        if missing:
            raise ValueError(
                f"{name}: rank {rank} < head size {head_dim} for forms {config_forms} would need the "
                f"{'/'.join(missing)} form at full rank beside it, but the stock attention forward has one head "
                "size for queries, keys and values. Patch both forms (forms=('qk', 'ov')) or use rank=1.0."
            )
    if "qk" in forms and kv_heads != heads:
        raise ValueError(f"{name}: a QK form with grouped key heads ({kv_heads} for {heads} query heads) is not supported")
    return _Plan(name, module, layout, head_dim, rank, heads, kv_heads, forms)


# --------------------------------------------------------------------------- spectral initialization


def _heads_of_rows(W: torch.Tensor, groups: int) -> torch.Tensor:
    """(…, groups·d_h, d) projection rows → per-head factors (…, groups, d, d_h)."""
    return W.unflatten(-2, (groups, -1)).transpose(-1, -2)


def _rows_of_heads(F: torch.Tensor) -> torch.Tensor:
    """Inverse of _heads_of_rows: (…, groups, d, r) → (…, groups·r, d)."""
    return F.transpose(-1, -2).flatten(-3, -2)


def _split_bias(F: torch.Tensor, d: int, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bias-augmented factors (…, groups, d(+1), r) → (projection rows, bias)."""
    return _rows_of_heads(F[..., :d, :]), (F[..., d, :].flatten(-2) if has_bias else None)


def _spectral_qk(rank: int, heads: int, q, k):
    """SI of the affine QK form [x, 1] [Q_h; b_q,hᵀ] [K_h; b_k,hᵀ]ᵀ [x, 1]ᵀ of every head.

    Slots are stacked over modules: W (N, heads·d_h, d), bias (N, heads·d_h) or None.
    """
    (Wq, bq), (Wk, bk) = q, k
    d = Wq.shape[-1]
    A = augment_with_bias(_heads_of_rows(Wq, heads), None if bq is None else bq.unflatten(-1, (heads, -1)))
    B = augment_with_bias(_heads_of_rows(Wk, heads), None if bk is None else bk.unflatten(-1, (heads, -1)))
    A_r, B_r, S = spectral_product_factors(A, B, rank)
    return _split_bias(A_r, d, bq is not None), _split_bias(B_r, d, bk is not None), S


def _spectral_ov(rank: int, heads: int, kv_heads: int, v, o):
    """SI of the OV form of each key/value group g: V_g [O_h1 … O_hk]ᵀ over the query heads sharing V_g.

    The value bias only adds the constant Σ_h O_h b_v,h after the softmax average (whose rows sum
    to 1), so it is folded exactly into the output bias where there is one and set to zero;
    without an output bias it joins V as an augmented row instead. Slots are stacked over modules.
    """
    (Wv, bv), (Wo, bo) = v, o
    G, k, d = kv_heads, heads // kv_heads, Wv.shape[-1]
    fold = bv is not None and bo is not None
    if fold:  # each query head adds its group's value bias through its own O block
        bv_per_head = bv.float().unflatten(-1, (G, 1, -1)).expand(*bv.shape[:-1], G, k, -1).flatten(-3)
        bo = (bo.float() + (Wo.float() @ bv_per_head.unsqueeze(-1)).squeeze(-1)).to(bo.dtype)
    A = augment_with_bias(_heads_of_rows(Wv, G), None if bv is None or fold else bv.unflatten(-1, (G, -1)))
    B = Wo.unflatten(-1, (G, k, -1)).movedim(-4, -2).flatten(-3, -2)  # (N, G, k·d_out, d_h)
    A_r, B_r, S = spectral_product_factors(A, B, rank)
    new_v = _split_bias(A_r, d, bv is not None and not fold)
    if fold:
        new_v = (new_v[0], torch.zeros(new_v[0].shape[:-1], dtype=bv.dtype, device=bv.device))
    new_o = (B_r.unflatten(-2, (k, -1)).movedim(-2, -4).flatten(-3), bo)  # (N, d_out, heads·r)
    return new_v, new_o, S


# Weights stacked per QR/SVD batch. On CPU a batch should stay cache-sized (16 MB in float64): a
# whole-model stack made BERT-large's patch 2.5x slower, memory-bound in the elementwise steps.
# On a GPU large batches mean fewer kernel launches (512 MB in float64).
_SI_BATCH_ELEMENTS = {"cpu": 2**21, "default": 2**26}


def _spectral_init(plans: list[_Plan], olds: list[dict]):
    """SI of every planned module, yielding (index, new slots, relative errors) per module.

    Modules with the same shapes (usually every layer) are stacked, so one batched QR/SVD call
    serves many layers: fewer LAPACK calls on CPU, fewer kernel launches on GPU.
    """
    groups: dict[tuple, list[int]] = {}
    for i, (plan, old) in enumerate(zip(plans, olds)):
        key = (plan.rank, plan.heads, plan.kv_heads, plan.forms,
               tuple((tuple(W.shape), W.dtype, W.device, b is None) for W, b in old.values()))
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        plan = plans[members[0]]
        per_module = sum(W.numel() for W, _ in olds[members[0]].values())
        device = olds[members[0]]["query"][0].device.type
        step = max(1, _SI_BATCH_ELEMENTS.get(device, _SI_BATCH_ELEMENTS["default"]) // per_module)
        for chunk in (members[j : j + step] for j in range(0, len(members), step)):
            def stacked(s):
                W, b = zip(*(olds[i][s] for i in chunk))
                return torch.stack(W), (None if b[0] is None else torch.stack(b))

            new, S = {}, {}
            if "qk" in plan.forms:
                new["query"], new["key"], S["qk"] = _spectral_qk(plan.rank, plan.heads, stacked("query"), stacked("key"))
            if "ov" in plan.forms:
                new["value"], new["output"], S["ov"] = _spectral_ov(
                    plan.rank, plan.heads, plan.kv_heads, stacked("value"), stacked("output"))
            for j, i in enumerate(chunk):
                slots = {s: (W[j], None if b is None else b[j]) for s, (W, b) in new.items()}
                yield i, {**olds[i], **slots}, {f: relative_tail_error(S[f][j], plan.rank) for f in S}


def _empty_slot(slot: tuple, shape: tuple[int, int]) -> tuple:
    """Uninitialized (weight, bias) of a new shape, for init='default' to fill."""
    W, b = slot
    empty = functools.partial(torch.empty, dtype=W.dtype, device=W.device)
    return empty(shape), (None if b is None else empty(shape[0]))


# --------------------------------------------------------------------------- patching


def _default_slots(plan: _Plan, old: dict) -> dict:
    """Uninitialized slots of the patched shapes, for init='default' to fill."""
    r, d_in, d_out = plan.rank, old["query"][0].shape[1], old["output"][0].shape[0]
    shapes = {"query": (plan.heads * r, d_in), "key": (plan.kv_heads * r, d_in),
              "value": (plan.kv_heads * r, d_in), "output": (d_out, plan.heads * r)}
    return {**old, **{s: _empty_slot(old[s], shapes[s]) for f in plan.forms for s in _FORM_SLOTS[f]}}


def install_slots(module: nn.Module, layout: AttentionLayout, new: dict, slots: set[str]) -> None:
    """Rebuild every projection (a fused one once) that holds one of `slots`, from `new`
    {slot: (weight (out, in), bias)}; cat copies, so no parameter shares storage with its source."""
    for path in {getattr(layout, s).path for s in slots}:
        chunks = sorted((s for s in _SLOTS if getattr(layout, s).path == path), key=lambda s: getattr(layout, s).chunk)
        W = torch.cat([new[s][0] for s in chunks])
        bias = None if new[chunks[0]][1] is None else torch.cat([new[s][1] for s in chunks])
        _set(module, path, _new_projection(module.get_submodule(path), W, bias))


def set_head_size(module: nn.Module, layout: AttentionLayout, head_size: int, heads: int) -> None:
    for attr in layout.head_size_attrs:
        _set(module, attr, head_size)
    for attr in layout.width_attrs:
        _set(module, attr, heads * head_size)


def _patched_slots(plan: _Plan) -> set[str]:
    return {s for f in plan.forms for s in _FORM_SLOTS[f]}


def _patch_module(plan: _Plan, scaling: str, new: dict, si_error: dict[str, float],
                  params_before: dict[str, int]) -> AttentionPatch:
    """Install the new slots in the module and set its head-size attributes."""
    layout, module, r = plan.layout, plan.module, plan.rank
    patched_slots = _patched_slots(plan)
    info = AttentionPatch(plan.name, layout, plan.forms, plan.head_dim, r, plan.heads, plan.kv_heads,
                          dict(si_error), dict(params_before))

    install_slots(module, layout, new, patched_slots)
    set_head_size(module, layout, r, plan.heads)
    if scaling == "rescale":
        _set(module, layout.scaling_attr, _get(module, layout.scaling_attr) * (plan.head_dim / r) ** 0.5)
    setattr(module, PATCH_ATTR, info)
    return info


@torch.no_grad()
def _default_init(model: nn.Module, module: nn.Module, layout: AttentionLayout, patched_slots: set[str]) -> None:
    """Initialize the patched slots with the model's own `_init_weights`, run on a scratch copy of the
    attention module so that nothing else in it (relative position tables, unpatched slots) changes."""
    scratch = copy.deepcopy(module)
    scratch.apply(model._init_weights)
    for s in patched_slots:
        for target, source in zip(_slot(module, getattr(layout, s)), _slot(scratch, getattr(layout, s))):
            if target is not None:
                target.copy_(source)


def patched_projection_names(model: nn.Module) -> set[str]:
    """Qualified names of the projections of patched attention modules: they belong to the
    attention patch, never to a layer factorization."""
    return {f"{name}.{getattr(info.layout, s).path}" for name, m in model.named_modules()
            if (info := getattr(m, PATCH_ATTR, None)) is not None for s in _SLOTS}


def is_fnl_patched(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, CONFIG_ATTR, None) is not None or any(
        hasattr(m, PATCH_ATTR) or isinstance(m, FactorizedLayer) for m in model.modules())


@torch.no_grad()
def fnl_patch(model: nn.Module, config: FNLConfig | None = None, **overrides) -> nn.Module:
    """Factorize every targeted attention module of `model` in place (and return it).

    `config` is an FNLConfig; keyword overrides replace its fields, e.g.
    `fnl_patch(model, rank=0.5, forms=("ov",))`.
    """
    config = FNLConfig(**{**(config.__dict__ if config else {}), **overrides})
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = architecture_for(model_type) if config.forms else None
    if is_fnl_patched(model):
        raise RuntimeError(
            "this model is already patched by hf_fnl (config.fnl is set); patching twice would factorize the "
            "factors. Start from the unpatched model, or use hf_fnl.fnl_merge first to get a dense one."
        )
    plans = _plan(model, arch, config) if config.forms else []  # validates every module before anything changes
    if config.forms and not plans:
        raise ValueError(f"no attention module of this {model_type} model matched target_modules={config.target_modules!r}")
    if config.init == "spectral":
        for plan in plans:
            if any(p.is_meta for p in plan.module.parameters()):
                raise ValueError(
                    f"{plan.name} has weights on the meta device, so there is nothing to take an SVD of. Load or "
                    "materialize the weights first (e.g. from_pretrained without device_map='meta' / init_empty_weights), "
                    "or use init='default'."
                )
    params_before = sum(p.numel() for p in model.parameters())
    olds = [{s: _slot(plan.module, getattr(plan.layout, s)) for s in _SLOTS} for plan in plans]
    if config.init == "spectral":
        initialized = _spectral_init(plans, olds)
    else:
        initialized = ((i, _default_slots(plan, old), {}) for i, (plan, old) in enumerate(zip(plans, olds)))
    infos = [None] * len(plans)
    for i, new, errors in tqdm(initialized, total=len(plans), desc="fnl_patch", unit="attn", disable=not config.progress):
        plan = plans[i]
        before = {f: sum(_slot_params(*olds[i][s]) for s in _FORM_SLOTS[f]) for f in plan.forms}
        infos[i] = _patch_module(plan, config.scaling, new, errors, before)
        if config.init == "default":
            _default_init(model, plan.module, plan.layout, _patched_slots(plan))
    layers = {}
    if config.linear_targets is not None:
        layers = fnl_factorize_layers(model, config.linear_targets, config.linear_rank, config.linear_inner,
                                      config.linear_init or config.init, progress=config.progress)
    record_spec(model, config, params_before, {i.name: {
        "rank": i.rank, "head_dim": i.head_dim, "heads": i.heads, "kv_heads": i.kv_heads, "forms": list(i.forms),
        "layout": _layout_dict(i.layout), "si_error": i.si_error, "params_before": i.params_before} for i in infos}, layers)
    return model


def record_spec(model: nn.Module, config: FNLConfig, params_before: int, modules: dict, layers: dict) -> None:
    """Store the patch spec in model.config.fnl (what save_pretrained writes and a reload rebuilds);
    a model that has one already gets the new layers added to it."""
    spec = getattr(model.config, CONFIG_ATTR, None)
    if spec is not None:
        spec["modules"].update(modules)
        spec["layers"].update(layers)
        return
    setattr(model.config, CONFIG_ATTR, {
        "version": __version__, **config.to_dict(), "params_before": params_before, "modules": modules, "layers": layers,
        "load_with": "pip install hf-fnl; hf_fnl.from_pretrained(path) (or transformers' from_pretrained after import hf_fnl)",
    })


def _layout_dict(layout: AttentionLayout) -> dict:
    """The layout as plain JSON, so that a saved spec describes its structure without hf_fnl's table."""
    slots = {s: [getattr(layout, s).path, getattr(layout, s).chunk, getattr(layout, s).chunks] for s in _SLOTS}
    return {**slots, "head_size_attrs": list(layout.head_size_attrs), "width_attrs": list(layout.width_attrs),
            "scaling_attr": layout.scaling_attr}


def apply_fnl_spec(model: nn.Module, spec: dict) -> int:
    """Rebuild the patched structure that `spec` (a saved config.fnl) describes, without computing
    anything: projections get the patched shapes with uninitialized weights, for a checkpoint to
    fill. Modules already patched are left alone. Returns the number of modules patched now.

    Module names are matched through `name_aliases`."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    patched = apply_layer_spec(model, spec.get("layers") or {}, prefix)
    saved = spec.get("modules") or {}
    if not saved:
        return patched
    arch = architecture_for(getattr(model.config, "model_type", None))
    for name, module, layout in fnl_attention_modules(model):
        if hasattr(module, PATCH_ATTR):
            continue
        entry = next((saved[n] for n in name_aliases(name, prefix) if n in saved), None)
        if entry is None:
            continue
        plan = _plan_module(arch, name, module, layout, int(entry["rank"]), tuple(entry["forms"]))
        olds = {s: _slot(module, getattr(layout, s)) for s in _SLOTS}
        _patch_module(plan, spec.get("scaling", "original"), _default_slots(plan, olds),
                      entry.get("si_error", {}), entry.get("params_before", {}))
        patched += 1
    return patched


# --------------------------------------------------------------------------- factor pairs


@dataclass(frozen=True)
class HeadBlocks:
    """The per-head (or per-group) blocks of one factor inside a weight.

    `view()` is a view into the parameter of shape (groups, per_group, m, rank): heads are blocks of
    output features for Q/K/V (m = in_features, per_group = 1) and blocks of input features for O
    (m = out_features, per_group = query heads sharing one key/value group). A factorized layer's
    U and V are single blocks of the same two kinds.
    """

    weight: nn.Parameter
    layout: BlockLayout

    def view(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The blocks of the weight, or of `tensor` shaped like it (a gradient, an optimizer buffer)."""
        return self.layout.view(self.weight if tensor is None else tensor)

    def matrix(self) -> torch.Tensor:
        """(groups, per_group · m, rank): the factor each group's product uses (a copy if per_group > 1)."""
        return self.view().reshape(self.layout.groups, -1, self.layout.rank)


@dataclass(frozen=True)
class FactorPair:
    """One form of one module: per group g the product A_g (M) B_gᵀ (weights only, no biases).

    Forms: "qk"/"ov" per attention head or key/value group, "linear"/"conv" for a factorized layer,
    whose inner factor M (U M Vᵀ) is `middle`."""

    module_name: str
    form: str
    a: HeadBlocks
    b: HeadBlocks
    middle: nn.Parameter | None = None

    def product(self) -> torch.Tensor:
        A = self.a.matrix() if self.middle is None else self.a.matrix() @ self.middle
        return A @ self.b.matrix().transpose(-1, -2)


def _blocks(module: nn.Module, proj: Projection, head_rows: bool, groups: int, per_group: int, rank: int) -> HeadBlocks:
    projection = module.get_submodule(proj.path)
    width = _weight_oi(projection).shape[0] // proj.chunks
    layout = BlockLayout(isinstance(projection, Conv1D), head_rows, proj.chunk * width, groups, per_group, rank)
    return HeadBlocks(projection.weight, layout)


ALL_FORMS = ("qk", "ov", "linear", "conv")


def fnl_factor_pairs(model: nn.Module, forms: tuple[str, ...] = ALL_FORMS) -> list[FactorPair]:
    """The factor pairs of a patched model, for per-head Frobenius decay and diagnostics."""
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, FactorizedLayer):
            form = module.form
            if form in forms:
                pairs.append(FactorPair(name, form, HeadBlocks(module.u, module.u_layout),
                                        HeadBlocks(module.v, module.v_layout), module.m))
            continue
        info: AttentionPatch | None = getattr(module, PATCH_ATTR, None)
        if info is None:
            continue
        L, r = info.layout, info.rank
        if "qk" in forms and "qk" in info.forms:
            pairs.append(FactorPair(name, "qk", _blocks(module, L.query, True, info.heads, 1, r),
                                    _blocks(module, L.key, True, info.kv_heads, 1, r)))
        if "ov" in forms and "ov" in info.forms:
            k = info.heads // info.kv_heads
            pairs.append(FactorPair(name, "ov", _blocks(module, L.value, True, info.kv_heads, 1, r),
                                    _blocks(module, L.output, False, info.kv_heads, k, r)))
    return pairs
