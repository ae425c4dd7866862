"""Training-step time of patched BERT against its unpatched references.

- patched at full rank vs the original model (target ≤ 1.02x): the patch must cost nothing;
- patched at rank 0.5 vs a BERT whose head size was halved by hand (module surgery written here,
  no hf_fnl), the same shapes (target ≤ 1.02x).
Forward, backward and an AdamW step, bf16 autocast and SDPA on GPU; the variants alternate step by
step so that drift in machine load affects all alike. Prints JSON; `--out FILE` also writes it.

    python benchmarks/train_step.py --device cuda --bf16 --out benchmarks/results/train_step_h100.json
    python benchmarks/train_step.py --device cpu --preset tiny     # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
import transformers as tf
from torch import nn

import hf_fnl
from report import BERT_LARGE, device_name, emit, sync  # benchmarks/report.py

PRESETS = {
    "bert-base": dict(),
    "bert-large": BERT_LARGE,
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}


def halve_heads_by_hand(model: tf.BertForMaskedLM) -> tf.BertForMaskedLM:
    """Every attention head keeps its count and gets half the size: narrower q/k/v/o, by hand."""
    for layer in model.bert.encoder.layer:
        att = layer.attention.self
        d, half = model.config.hidden_size, att.attention_head_size // 2
        width = att.num_attention_heads * half
        device, dtype = att.query.weight.device, att.query.weight.dtype
        att.query, att.key, att.value = (nn.Linear(d, width, device=device, dtype=dtype) for _ in range(3))
        layer.attention.output.dense = nn.Linear(width, d, device=device, dtype=dtype)
        att.attention_head_size, att.all_head_size = half, width
        att.scaling = (2 * half) ** -0.5  # the original temperature, as fnl_patch keeps it
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="bert-base", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=None, help="default 32 on cuda, 4 on cpu")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on cuda, 4 on cpu)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--out")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    batch, steps = args.batch or (32 if cuda else 4), args.steps or (30 if cuda else 4)

    config = tf.BertConfig(**PRESETS[args.preset])
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    original = tf.BertForMaskedLM(config)
    variants = {
        "original": original,
        "patched_full_rank": hf_fnl.fnl_patch(copy.deepcopy(original), rank=1.0, progress=False),
        "patched_rank_0.5": hf_fnl.fnl_patch(copy.deepcopy(original), rank=0.5, progress=False),
        "halved_by_hand": halve_heads_by_hand(copy.deepcopy(original)),
    }
    ids = torch.randint(0, config.vocab_size, (batch, args.seq), device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    states = {}
    for name, model in variants.items():
        model.to(args.device).train()
        states[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda or None))

    def step(model, optimizer) -> float:
        sync(args.device)
        start = time.perf_counter()
        with autocast:
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        return (time.perf_counter() - start) * 1e3

    times = {name: [] for name in variants}
    for i in range(steps + 3):
        for name, (model, optimizer) in states.items():
            t = step(model, optimizer)
            if i >= 3:
                times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    report = {
        "benchmark": f"{args.preset} MLM training step (fwd+bwd+AdamW)",
        "device": device_name(args.device),
        "batch": batch, "seq": args.seq, "bf16_autocast": args.bf16, "attention": args.attn,
        "torch": torch.__version__, "transformers": tf.__version__,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "patched_full_rank_vs_original": round(med["patched_full_rank"] / med["original"], 4),
        "patched_rank_0.5_vs_halved_by_hand": round(med["patched_rank_0.5"] / med["halved_by_hand"], 4),
        "params": {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in states.items()},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
