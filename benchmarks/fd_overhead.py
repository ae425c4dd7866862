"""Frobenius-decay overhead in a BERT-base training step: Flambe (FD on OV) vs Lamb, same everything else.

A BERT-base MLM model halved by fnl_patch (rank 0.5) runs forward, backward, gradient clipping and
the optimizer step on random tokens; the two optimizers alternate step by step on the same model so
that drift in machine load affects both alike. Prints JSON; `--out FILE` also writes it.

    python benchmarks/fd_overhead.py --device cpu --batch 8 --seq 128
    python benchmarks/fd_overhead.py --device cuda --batch 32 --seq 128 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import transformers as tf

import hf_fnl
from hf_fnl.optim import Flambe, Lamb, fnl_param_groups
from report import device_name, emit, sync  # benchmarks/report.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = tf.BertForMaskedLM(tf.BertConfig())
    hf_fnl.fnl_patch(model, rank=0.5, progress=False)
    model.to(args.device).train()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=args.device)
    optimizers = {
        "lamb": Lamb(fnl_param_groups(model, 0.01, fd_targets=()), lr=1e-4),
        "flambe": Flambe(fnl_param_groups(model, 0.01, fd_targets=("ov",)), lr=1e-4),
    }
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def train_step(optimizer) -> tuple[float, float]:
        """(whole step, optimizer step) in ms."""
        start = time.perf_counter()
        with autocast:
            loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync(args.device)
        before_step = time.perf_counter()
        optimizer.step()
        sync(args.device)
        end = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        return (end - start) * 1e3, (end - before_step) * 1e3

    times = {name: [] for name in optimizers}
    step_times = {name: [] for name in optimizers}
    for step in range(args.steps + 2):
        for name, optimizer in optimizers.items():
            t, t_opt = train_step(optimizer)
            if step >= 2:  # warm-up
                times[name].append(t)
                step_times[name].append(t_opt)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    opt = {name: statistics.median(ts) for name, ts in step_times.items()}
    report = {
        "benchmark": "BERT-base (rank 0.5) training step, Flambe (FD on OV) vs Lamb",
        "device": device_name(args.device),
        "batch": args.batch, "seq": args.seq, "bf16_autocast": args.bf16, "torch": torch.__version__,
        "lamb_step_ms": round(med["lamb"], 1), "flambe_step_ms": round(med["flambe"], 1),
        "fd_overhead_pct": round(100 * (med["flambe"] / med["lamb"] - 1), 2),
        "lamb_optimizer_step_ms": round(opt["lamb"], 1), "flambe_optimizer_step_ms": round(opt["flambe"], 1),
        # the optimizer steps are timed alone, so their difference is the FD cost without the
        # forward/backward noise that dominates the whole-step difference on a busy CPU
        "fd_overhead_pct_from_optimizer_steps": round(100 * (opt["flambe"] - opt["lamb"]) / med["lamb"], 2),
        "runs_ms": {k: [round(t, 1) for t in v] for k, v in times.items()},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
