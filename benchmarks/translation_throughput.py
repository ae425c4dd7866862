"""Training throughput (target tokens/s) of the IWSLT-14 recipe's model: baseline vs factorized.

The model and optimizer are the recipe's own (recipes/iwslt14/train.py: build_model, build_optimizer):
the baseline with weight decay, the factorized variants with Frobenius decay on the OV forms (and
linear layers). One update = forward, label-smoothed loss, backward, clip, optimizer step on a
synthetic batch of --max-tokens padded tokens; the variants alternate update by update so that
drift in machine load affects all alike. bf16 autocast and SDPA on GPU. Prints JSON; `--out FILE`
also writes it.

    python benchmarks/translation_throughput.py --device cuda --bf16 --out benchmarks/results/translation_throughput_h100.json
    python benchmarks/translation_throughput.py --device cpu --preset tiny      # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import transformers as tf

from report import device_name, emit, sync  # benchmarks/report.py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "iwslt14"))
import train as recipe  # noqa: E402  (the recipe's model and optimizer, not a copy)

VARIANTS = {  # name: the recipe's flags
    "baseline": ["--decay-kind", "wd"],
    "factorized_full_rank": ["--rank", "1.0", "--decay-kind", "fd-ov"],
    "factorized_rank_0.5": ["--rank", "0.5", "--decay-kind", "fd-ov"],
    "factorized_rank_1.0_linear_0.5": ["--rank", "1.0", "--linear-rank-scale", "0.5", "--decay-kind", "fd-ov"],
}

BOS, PAD, EOS = 0, 1, 2  # fairseq's dictionary order, as recipes/iwslt14/prepare.py writes it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="transformer_iwslt_de_en", choices=sorted(recipe.PRESETS))
    parser.add_argument("--optimizer", default="adam", choices=sorted(recipe.OPTIMIZERS))
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (each side)")
    parser.add_argument("--seq", type=int, default=32, help="source and target length")
    parser.add_argument("--steps", type=int, default=None, help="timed updates (default 30 on cuda, 3 on cpu)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    steps = args.steps or (30 if cuda else 3)
    batch = max(1, args.max_tokens // args.seq)

    states = {}
    for name, flags in VARIANTS.items():
        run_args = recipe.parse_args(["--data-dir", "-", "--output-dir", "-", "--preset", args.preset,
                                      "--optimizer", args.optimizer, "--decay", "1e-4", *flags])
        torch.manual_seed(0)
        model = recipe.build_model(run_args, args.vocab, pad_id=PAD, bos_id=BOS, eos_id=EOS).to(args.device).train()
        optimizer, coupled = recipe.build_optimizer(run_args, model)
        states[name] = (model, optimizer, coupled, run_args)

    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, args.vocab, (batch, args.seq), generator=g).to(args.device)
    labels = torch.randint(4, args.vocab, (batch, args.seq), generator=g).to(args.device)
    decoder_input = torch.cat([torch.full_like(labels[:, :1], EOS), labels[:, :-1]], 1)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def update(model, optimizer, coupled, run_args) -> float:
        sync(args.device)
        start = time.perf_counter()
        with autocast:
            logits = model(input_ids=src, decoder_input_ids=decoder_input).logits
        loss, _ = recipe.label_smoothed_loss(logits, labels, run_args.label_smoothing)
        if coupled:
            loss = loss + run_args.decay * recipe.fd_penalty(coupled)
        loss.backward()
        if run_args.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run_args.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        return time.perf_counter() - start

    times = {name: [] for name in states}
    for i in range(steps + 2):
        for name, state in states.items():
            t = update(*state)
            if i >= 2:
                times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    tokens = batch * args.seq
    report = {
        "benchmark": f"IWSLT-14 recipe training update, {args.preset}, {args.optimizer}",
        "device": device_name(args.device),
        "batch": batch, "seq": args.seq, "target_tokens_per_update": tokens, "bf16_autocast": args.bf16,
        "torch": torch.__version__, "transformers": tf.__version__,
        "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "target_tokens_per_s": {k: round(tokens / v) for k, v in med.items()},
        "time_vs_baseline": {k: round(v / med["baseline"], 4) for k, v in med.items()},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, (m, *_) in states.items()},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
