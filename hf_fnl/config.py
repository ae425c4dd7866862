"""FNLConfig: what fnl_patch does to a model."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

__all__ = ["FNLConfig", "FORMS", "resolve_rank", "check_layer_rank", "matches_targets"]

FORMS = ("qk", "ov")
_INITS = ("spectral", "default")
_SCALINGS = ("original", "rescale")


def _check_rank(rank, where: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise TypeError(f"{where}: rank must be an int (absolute) or a float in (0, 1] (fraction of the head size), got {rank!r}")
    if rank <= 0:
        raise ValueError(f"{where}: rank must be > 0, got {rank!r}")
    if isinstance(rank, float) and rank > 1.0:
        raise ValueError(
            f"{where}: a float rank is a fraction of the head size and must be in (0, 1], got {rank!r}; "
            "pass an int for an absolute rank"
        )


def check_layer_rank(rank, where: str) -> None:
    """A factorized layer's rank: a positive int (absolute) or a positive float rank scale."""
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0:
        raise ValueError(f"{where} must be a positive int or a positive float rank scale, got {rank!r}")


def matches_targets(targets: str | list[str], name: str) -> bool:
    """Whether a module name is targeted: `targets` is a regex (full match) or a list of name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def resolve_rank(rank: int | float, head_dim: int, where: str = "rank") -> int:
    """Absolute per-head rank: an int is taken as is, a float is round(rank · head_dim), at least 1."""
    _check_rank(rank, where)
    r = rank if isinstance(rank, int) else max(1, math.floor(rank * head_dim + 0.5))
    if r > head_dim:
        raise ValueError(
            f"{where}: rank {r} is above the head size {head_dim}; attention forms have rank at most "
            f"head_dim, so use a rank in 1..{head_dim} (or a fraction in (0, 1])"
        )
    return r


@dataclass
class FNLConfig:
    """Configuration of `fnl_patch`.

    rank: per-head rank of the patched forms; a float in (0, 1] is a fraction of the head size
        (0.5 = the paper's "halved MHA dimension"), an int an absolute rank.
    forms: which per-head forms to factorize: "qk" (Query-Key) and/or "ov" (Output-Value).
        While the stock attention forward is kept, both forms share one head size, so a form left
        out keeps full rank and the rank of the other must be full too.
    init: "spectral" (SI of the current weights, pretrained or the model's own random init) or
        "default" (fresh projections initialized by the model's own `_init_weights`).
    scaling: "original" keeps the softmax temperature of the unpatched model (the paper's choice,
        needed for SI to approximate the original logits); "rescale" multiplies it by √(d_h / r).
    target_modules: which attention modules to patch: a regex (full match against the module's
        qualified name) or a list of name suffixes; None patches every attention module.
    rank_pattern: {regex: rank} overrides `rank` for modules whose name the regex matches
        (re.search; the first matching key wins), like PEFT's rank_pattern.
    linear_targets: Linear/Conv1D/Conv2d layers to factorize (FactorizedLinear/FactorizedConv2d):
        a regex (full match) or a list of name suffixes, e.g. r".*(intermediate|output)[.]dense".
        Projections of the attention modules patched here are left to the attention patch.
    linear_rank: their rank: an int, or a float rank scale (fraction of min(m, n) for linear layers,
        of c_out·k for k×k convolutions, the paper's convention); above 1 is overcomplete.
    linear_inner: factorize as U M Vᵀ with M = I (the paper's "deep" overcomplete variant).
    linear_init: "spectral" or "default" for the linear layers; None: `init` (the paper toggles SI
        separately for attention and for linear layers).
    progress: show a tqdm progress bar while patching.
    """

    rank: int | float = 1.0
    forms: tuple[str, ...] = FORMS
    init: str = "spectral"
    scaling: str = "original"
    target_modules: str | list[str] | None = None
    rank_pattern: dict[str, int | float] = field(default_factory=dict)
    linear_targets: str | list[str] | None = None
    linear_rank: int | float = 0.5
    linear_inner: bool = False
    linear_init: str | None = None
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.forms, str):
            self.forms = (self.forms,)
        self.forms = tuple(self.forms)
        bad = [f for f in self.forms if f not in FORMS]
        if bad or not (self.forms or self.linear_targets):
            raise ValueError(f"forms must be a subset of {FORMS}, non-empty unless linear_targets is set; got {self.forms!r}")
        check_layer_rank(self.linear_rank, "linear_rank")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.linear_init not in (None, *_INITS):
            raise ValueError(f"linear_init must be None (same as init) or one of {_INITS}, got {self.linear_init!r}")
        if self.scaling not in _SCALINGS:
            raise ValueError(f"scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        _check_rank(self.rank, "FNLConfig.rank")
        for pattern, rank in self.rank_pattern.items():
            re.compile(pattern)
            _check_rank(rank, f"FNLConfig.rank_pattern[{pattern!r}]")

    def rank_for(self, module_name: str) -> int | float:
        for pattern, rank in self.rank_pattern.items():
            if re.search(pattern, module_name):
                return rank
        return self.rank

    def targets(self, module_name: str) -> bool:
        return self.target_modules is None or matches_targets(self.target_modules, module_name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["forms"] = list(self.forms)
        d.pop("progress")
        return d
