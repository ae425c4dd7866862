"""FNLTrainingArguments and FNLTrainer: transformers' Trainer with Frobenius decay and FLAMBé.

Only the optimizer, the scheduler choice, the coupled-FD loss term and the logged diagnostics
differ from Trainer; evaluation, checkpoints, resume, `report_to` and `push_to_hub` are Trainer's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, TrainingArguments

from .dlrt import KLSIntegrator
from .optim import FDAdamW, Flambe, Lamb, fnl_param_groups
from .patch import ALL_FORMS, fnl_factor_pairs
from .plotting import new_figure, save_figure
from .regularize import fd_penalty, form_norms

__all__ = ["FNLTrainingArguments", "FNLTrainer", "FNLPlotCallback", "nvidia_poly_schedule"]

logger = logging.getLogger(__name__)

FNL_OPTIMIZERS = ("flambe", "lamb", "adamw_fd", "sgd_fd", "kls")


@dataclass
class FNLTrainingArguments(TrainingArguments):
    fnl_optim: str | None = field(default=None, metadata={
        "help": "flambe (LAMB + decoupled FD), lamb, adamw_fd (AdamW + decoupled FD), sgd_fd (SGD/NAG + coupled FD), "
                "kls (rank-adaptive DLRTLinear layers by the KLS integrator, SGD for the rest); None: the stock `optim`."})
    fd_coef: float | None = field(default=None, metadata={
        "help": "Frobenius-decay coefficient; default: weight_decay (the paper's no-new-tuning rule)."})
    fd_targets: list[str] = field(default_factory=lambda: ["ov"], metadata={
        "help": "forms that get FD instead of weight decay: ov, qk, linear, conv."})
    fd_mode: str | None = field(default=None, metadata={
        "help": "decoupled (in the optimizer step) or coupled (added to the loss); default: coupled for sgd_fd, "
                "decoupled otherwise."})
    lamb_betas: tuple[float, float] = (0.9, 0.999)
    lamb_eps: float = 1e-6
    lamb_trust_ratio_on: str = field(default="all", metadata={
        "help": "all (LAMB paper) or decayed (NVIDIA FusedLAMB: only tensors with weight decay or FD)."})
    dlrt_theta: float = field(default=0.1, metadata={"help": "kls: relative truncation threshold of the adapted rank"})
    sgd_momentum: float = 0.9
    sgd_nesterov: bool = True
    fnl_scheduler: str | None = field(default=None, metadata={
        "help": "nvidia_poly: linear warmup to warmup_ratio, then (1 - progress)^0.5 (NVIDIA's BERT recipe); "
                "None: lr_scheduler_type."})
    fnl_plot: bool = field(default=True, metadata={"help": "write fnl_diagnostics.png to output_dir after training"})

    def __post_init__(self):
        super().__post_init__()
        if self.fnl_optim is not None and self.fnl_optim not in FNL_OPTIMIZERS:
            raise ValueError(f"fnl_optim must be one of {FNL_OPTIMIZERS} or None (stock `optim`), got {self.fnl_optim!r}")
        if isinstance(self.fd_targets, str):
            self.fd_targets = [t.strip() for t in self.fd_targets.split(",") if t.strip()]
        bad = [t for t in self.fd_targets if t not in ALL_FORMS]
        if bad:
            raise ValueError(f"fd_targets must be forms among {ALL_FORMS}, got {self.fd_targets}")
        if self.fd_mode is None:
            self.fd_mode = "coupled" if self.fnl_optim == "sgd_fd" else "decoupled"
        if self.fd_mode not in ("decoupled", "coupled"):
            raise ValueError(f"fd_mode must be 'decoupled' or 'coupled', got {self.fd_mode!r}")
        if self.fnl_optim == "sgd_fd" and self.fd_mode == "decoupled":
            raise ValueError("sgd_fd applies FD through the loss: use fd_mode='coupled' (or adamw_fd/flambe for decoupled FD)")
        if self.fnl_optim == "kls" and self.gradient_accumulation_steps != 1:
            raise ValueError("fnl_optim='kls' updates the low-rank factors once per batch: use gradient_accumulation_steps=1")
        if self.fnl_scheduler not in (None, "nvidia_poly"):
            raise ValueError(f"fnl_scheduler must be None or 'nvidia_poly', got {self.fnl_scheduler!r}")

    @property
    def effective_fd_coef(self) -> float:
        return self.weight_decay if self.fd_coef is None else self.fd_coef


def nvidia_poly_schedule(optimizer, num_warmup_steps: int, num_training_steps: int, degree: float = 0.5) -> LambdaLR:
    """NVIDIA's PolyWarmUpScheduler: lr · step/warmup during warmup, then lr · (1 − step/total)^degree.

    As in NVIDIA's code the decay is of the overall progress, so the factor drops from 1 to
    (1 − warmup/total)^degree where warmup ends."""
    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, 1.0 - step / max(1, num_training_steps)) ** degree
    return LambdaLR(optimizer, factor)


class FNLPlotCallback(TrainerCallback):
    """After training, plot the logged fnl/* diagnostics against the step into output_dir."""

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        series: dict[str, tuple[list, list]] = {}
        for entry in state.log_history:
            for key, value in entry.items():
                if key.startswith("fnl/") or key == "loss":
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(entry["step"])
                    ys.append(value)
        if not series:
            return
        keys = sorted(series)
        try:
            fig, axes = new_figure(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
        except ImportError:
            logger.warning("matplotlib is not installed (pip install 'hf-fnl[plots]'): no fnl_diagnostics.png")
            return
        for ax, key in zip(axes[:, 0], keys):
            ax.plot(*series[key], marker=".")
            ax.set_ylabel(key.removeprefix("fnl/"), fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle("hf-fnl training diagnostics")
        save_figure(fig, os.path.join(args.output_dir, "fnl_diagnostics.png"))


class FNLTrainer(Trainer):
    """Trainer whose optimizer applies Frobenius decay to the factor pairs of an `fnl_patch`-ed model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._coupled_fd_pairs = []
        if getattr(self.args, "fnl_plot", False):
            self.add_callback(FNLPlotCallback())

    # ------------------------------------------------------------------ optimizer and scheduler

    def create_optimizer(self, model=None):
        args = self.args
        if self.optimizer is not None or getattr(args, "fnl_optim", None) is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        no_decay = {n for n, _ in model.named_parameters()} - set(self.get_decay_parameter_names(model))
        if args.fnl_optim == "kls":
            if args.world_size > 1:
                raise ValueError("fnl_optim='kls' runs in one process: the K/L/S gradients are not parameters "
                                 "that DDP averages, and the layers' shapes change every step")
            # every parameter but the DLRT factors (buffers, stepped by the integrator) takes SGD on the S-step gradients
            self.optimizer = torch.optim.SGD(fnl_param_groups(model, args.weight_decay, 0.0, (), no_decay),
                                             lr=args.learning_rate, momentum=args.sgd_momentum)
            self._kls = KLSIntegrator(model, args.learning_rate, args.dlrt_theta)
            return self.optimizer
        targets = () if args.fnl_optim == "lamb" else tuple(args.fd_targets)
        pairs = fnl_factor_pairs(model, targets) if targets else []
        if targets and not pairs:
            raise ValueError(f"fnl_optim={args.fnl_optim!r} with fd_targets={targets} found no factor pairs: "
                             "patch the model with hf_fnl.fnl_patch first, or use fnl_optim='lamb'")
        groups = fnl_param_groups(model, args.weight_decay, args.effective_fd_coef, targets, no_decay, args.fd_mode)
        if args.fnl_optim in ("flambe", "lamb"):
            cls = Flambe if args.fnl_optim == "flambe" else Lamb
            self.optimizer = cls(groups, lr=args.learning_rate, betas=args.lamb_betas, eps=args.lamb_eps,
                                 trust_ratio_on=args.lamb_trust_ratio_on)
        elif args.fnl_optim == "adamw_fd":
            self.optimizer = FDAdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                     eps=args.adam_epsilon)
        else:  # sgd_fd: SGD/NAG; factor tensors take FD through the loss (fd_mode coupled) instead of weight decay
            self.optimizer = torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.sgd_momentum,
                                             nesterov=args.sgd_nesterov)
        self._coupled_fd_pairs = pairs if args.fd_mode == "coupled" else []
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and getattr(self.args, "fnl_scheduler", None) == "nvidia_poly":
            self.lr_scheduler = nvidia_poly_schedule(optimizer or self.optimizer,
                                                     self.args.get_warmup_steps(num_training_steps), num_training_steps)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if getattr(self.args, "fnl_optim", None) != "kls":
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)

        def closure():
            model.zero_grad(set_to_none=True)
            loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss)
            return loss

        self._kls.lr = self.optimizer.param_groups[0]["lr"]  # follows the scheduler
        # K-, L- and S-step passes; the S-step gradients stay on the other parameters, which Trainer
        # then clips and steps with the SGD optimizer
        return self._kls.step(closure)

    # ------------------------------------------------------------------ coupled FD

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        pairs = self._coupled_fd_pairs
        if not pairs or not model.training:
            return result
        penalty = self.args.effective_fd_coef * fd_penalty(pairs)
        # Trainer divides the loss by the accumulation steps unless it is already normalized over the
        # accumulated batch; either way the penalty must count once per optimizer step.
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        if scaled:
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            return result[0] + penalty, result[1]
        return result + penalty

    # ------------------------------------------------------------------ diagnostics

    def fnl_diagnostics(self) -> dict[str, float]:
        """Summed Frobenius/nuclear norms of the QK and OV products, FD penalty, mean trust ratio."""
        logs = {}
        kls = getattr(self, "_kls", None)
        if kls is not None and kls.rank_history:
            ranks = kls.rank_history[-1]
            logs["fnl/dlrt_mean_rank"] = sum(ranks.values()) / len(ranks)
        pairs = fnl_factor_pairs(self.model)
        if not pairs:
            return logs
        logs.update({f"fnl/{k}": v for k, v in form_norms(pairs).items()})
        targets = tuple(getattr(self.args, "fd_targets", ("ov",)))
        with torch.no_grad():
            logs["fnl/fd_penalty"] = float(getattr(self.args, "effective_fd_coef", 0.0)
                                           * fd_penalty([p for p in pairs if p.form in targets]))
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        trust = getattr(optimizer, "last_trust_ratio", None)
        if trust is not None:
            logs["fnl/trust_ratio"] = float(trust)
        return logs

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training logs only
            logs = {**logs, **self.fnl_diagnostics()}
        super().log(logs, *args, **kwargs)
