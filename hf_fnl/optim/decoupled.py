"""The step shared by Lamb, Flambe and FDAdamW: Adam moments, decoupled decay, optional trust ratio.

For each parameter p with gradient g (all tensors of a group at once, torch._foreach_*):
    m, v  ← Adam moments of g;  m̂, v̂ with bias correction
    u     = m̂ / (√v̂ + eps) + decay(p)
    p     ← p − lr · trust(p, u) · u,   trust = ‖p‖/‖u‖ (1 where either is 0), or 1 without trust ratio
decay(p) = weight_decay · p, except on the factor blocks named by the group's `fd_pairs`, where it
is the Frobenius-decay gradient fd_coef · A(BᵀB) (resp. B(AᵀA)), computed from the pre-step values
of both factors (decoupled FD, science.md).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from ..blocks import BlockLayout
from ..factorize import frobenius_decay_grads

__all__ = ["DecoupledDecayAdam"]


class DecoupledDecayAdam(Optimizer):
    """Base class; subclasses fix `use_trust_ratio` and whether FD groups are accepted.

    Param-group keys: lr, betas, eps, weight_decay, fd_coef, bias_correction, and `fd_pairs`:
    a list of (index_a, layout_a, index_b, layout_b, index_m) with indices into the group's params,
    layouts as plain tuples of `hf_fnl.blocks.BlockLayout`, and index_m the inner r×r factor of
    U M Vᵀ or -1 (see `hf_fnl.optim.fnl_param_groups`).
    """

    use_trust_ratio = False
    accepts_fd = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 fd_coef: float = 0.0, bias_correction: bool = True, trust_ratio_on: str = "all"):
        if lr < 0 or eps < 0 or weight_decay < 0 or fd_coef < 0:
            raise ValueError(f"lr, eps, weight_decay and fd_coef must be >= 0, got {lr}, {eps}, {weight_decay}, {fd_coef}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if trust_ratio_on not in ("all", "decayed"):
            raise ValueError("trust_ratio_on must be 'all' (every tensor, as in the LAMB paper) or 'decayed' "
                             f"(only tensors with weight decay or FD, as NVIDIA's FusedLAMB), got {trust_ratio_on!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fd_coef=fd_coef,
                        bias_correction=bias_correction, fd_pairs=())
        self.trust_ratio_on = trust_ratio_on
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._check_fd_group(group)
        self.last_trust_ratio: torch.Tensor | None = None  # mean over tensors of the last step, for diagnostics
        self._cpu_scratch: dict[torch.Tensor, torch.Tensor] = {}

    def _check_fd_group(self, group: dict) -> None:
        if group["fd_pairs"] and not self.accepts_fd:
            raise ValueError(f"{type(self).__name__} applies no Frobenius decay; a group with fd_pairs needs Flambe or FDAdamW")
        n = len(group["params"])
        for ia, la, ib, lb, im in group["fd_pairs"]:
            if not (0 <= ia < n and 0 <= ib < n and -1 <= im < n):
                raise ValueError(f"fd_pairs index out of range for a group of {n} params: {(ia, ib, im)}")
            BlockLayout(*la).view(group["params"][ia])  # fails early on a layout that does not fit
            BlockLayout(*lb).view(group["params"][ib])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ratios = []
        for group in self.param_groups:
            ratio = self._group_step(group)
            if ratio is not None:
                ratios.append(ratio)
        if ratios:
            self.last_trust_ratio = torch.cat(ratios).mean()
        return loss

    def _group_step(self, group: dict) -> torch.Tensor | None:
        all_params = group["params"]
        index = [i for i, p in enumerate(all_params) if p.grad is not None]
        if not index:
            return None
        params = [all_params[i] for i in index]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        beta1, beta2 = group["betas"]
        wd, fd = group["weight_decay"], group["fd_coef"]

        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"].item())

        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

        # u = m̂/(√v̂ + eps) + wd·p = c·m/(√v + eps·√bc2) + wd·p with c = √bc2/bc1: both bias corrections
        # become per-tensor scalars, and every pass runs in place on the scratch buffer
        if group["bias_correction"]:
            root_bc2 = [math.sqrt(1 - beta2**t) for t in steps]
            scale = [r / (1 - beta1**t) for r, t in zip(root_bc2, steps)]
        else:
            root_bc2, scale = [1.0] * len(steps), [1.0] * len(steps)
        update = self._scratch(params)
        torch._foreach_copy_(update, exp_avg_sqs)
        torch._foreach_sqrt_(update)
        torch._foreach_add_(update, [group["eps"] * r for r in root_bc2])
        torch._foreach_reciprocal_(update)
        torch._foreach_mul_(update, exp_avgs)
        torch._foreach_mul_(update, scale)
        if wd != 0:
            torch._foreach_add_(update, params, alpha=wd)
        if group["fd_pairs"]:
            self._add_frobenius_decay(group, dict(zip(index, update)), wd, fd)

        if not self.use_trust_ratio:
            torch._foreach_add_(params, update, alpha=-group["lr"])
            return None
        p_norms = torch.stack(torch._foreach_norm(params))
        u_norms = torch.stack(torch._foreach_norm(update))
        ratio = torch.where((p_norms > 0) & (u_norms > 0), p_norms / u_norms, torch.ones_like(p_norms))
        if self.trust_ratio_on == "decayed" and wd == 0:
            decayed = torch.zeros(len(params), dtype=torch.bool, device=ratio.device)
            if fd != 0:
                decayed[[k for k, i in enumerate(index) if any(i in (ia, ib, im) for ia, _, ib, _, im in group["fd_pairs"])]] = True
            ratio = torch.where(decayed, ratio, torch.ones_like(ratio))
        torch._foreach_addcmul_(params, update, list((ratio * -group["lr"]).unbind()))  # p += (−lr·trust)·u
        return ratio

    def _scratch(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """A buffer like each parameter for the update u. CPU tensors keep theirs between steps: a fresh
        allocation there costs page faults on every step (a 1.3 GB list took 5x longer to allocate
        than to fill); CUDA's caching allocator makes temporaries free and keeps memory for activations."""
        buffers = []
        for p in params:
            if p.device.type == "cpu":
                buf = self._cpu_scratch.get(p)
                if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                    buf = self._cpu_scratch[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            else:
                buf = torch.empty_like(p, memory_format=torch.preserve_format)
            buffers.append(buf)
        return buffers

    @staticmethod
    def _add_frobenius_decay(group: dict, update_of: dict, wd: float, fd: float) -> None:
        """On each factor's blocks replace wd·p by fd·A(BᵀB) (resp. fd·B(AᵀA), or the chain-rule terms
        of U M Vᵀ), all from pre-step values."""
        params = group["params"]
        for ia, la, ib, lb, im in group["fd_pairs"]:
            la, lb = BlockLayout(*la), BlockLayout(*lb)
            A, B = la.view(params[ia]), lb.view(params[ib])
            M = params[im] if im >= 0 else None
            grad_a, grad_b, grad_m = frobenius_decay_grads(A, B, stacked=True, M=M)
            terms = [(ia, la.view, A, grad_a), (ib, lb.view, B, grad_b)]
            if M is not None:
                terms.append((im, lambda t: t, M, grad_m.reshape(M.shape)))
            for i, view, factor, grad in terms:
                if i not in update_of:  # a frozen factor still decays its partner, but is not updated
                    continue
                blocks = view(update_of[i])
                blocks.add_(grad, alpha=fd)
                if wd != 0:
                    blocks.sub_(factor, alpha=wd)
