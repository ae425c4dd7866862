"""fnl_summary / print_fnl_summary: what a patch did, per module and form, with totals."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import FactorizedLayer
from .patch import CONFIG_ATTR, PATCH_ATTR, _FORM_SLOTS, _slot, _slot_params

__all__ = ["FormSummary", "FNLSummary", "fnl_summary", "print_fnl_summary"]


@dataclass(frozen=True)
class FormSummary:
    module: str
    form: str
    rank: int
    head_dim: int  # the full rank for a factorized layer: min(m, n)
    heads: int
    params_before: int
    params_after: int
    si_error: float | None  # relative Frobenius error of SI (None for init="default")


@dataclass(frozen=True)
class FNLSummary:
    rows: list[FormSummary]
    model_params_before: int
    model_params_after: int

    def table(self) -> str:
        header = ("module", "form", "rank", "heads", "params before", "params after", "SI rel. error")
        lines = [
            (r.module, r.form, f"{r.rank}/{r.head_dim}", str(r.heads), f"{r.params_before:,}", f"{r.params_after:,}",
             "-" if r.si_error is None else f"{r.si_error:.2e}")
            for r in self.rows
        ]
        form_before = sum(r.params_before for r in self.rows)
        form_after = sum(r.params_after for r in self.rows)
        lines.append(("total (factorized forms)", "", "", "", f"{form_before:,}", f"{form_after:,}", ""))
        ratio = self.model_params_after / self.model_params_before
        lines.append(("total (model)", "", "", "", f"{self.model_params_before:,}", f"{self.model_params_after:,}",
                      f"{ratio:.1%} kept"))
        widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
        fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, lines[:-2]), rule, *map(fmt, lines[-2:])])


def fnl_summary(model: nn.Module) -> FNLSummary:
    spec = getattr(model.config, CONFIG_ATTR, None)
    if spec is None:
        raise ValueError("this model is not patched by hf_fnl: call hf_fnl.fnl_patch(model, ...) first")
    rows = []
    for name, module in model.named_modules():
        info = getattr(module, PATCH_ATTR, None)
        if info is None:
            continue
        for form in info.forms:
            after = sum(_slot_params(*_slot(module, getattr(info.layout, s))) for s in _FORM_SLOTS[form])
            rows.append(FormSummary(name, form, info.rank, info.head_dim, info.heads, info.params_before[form], after,
                                    info.si_error.get(form)))
    for name, module in model.named_modules():
        if isinstance(module, FactorizedLayer):
            full = min(module.u.shape[0], module.v.shape[1])
            form = module.form
            rows.append(FormSummary(name, form, module.rank, full, 1, module.params_before or 0,
                                    sum(p.numel() for p in module.parameters()), module.si_error))
    return FNLSummary(rows, spec["params_before"], sum(p.numel() for p in model.parameters()))


def print_fnl_summary(model: nn.Module) -> None:
    print(fnl_summary(model).table())
