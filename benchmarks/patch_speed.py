"""Time fnl_patch (rank 0.5) on randomly initialized BERT-base/large against the naive way.

The naive way forms each head's QK and OV product (d+1 × d+1 with the bias row, d × d) and takes
its SVD, in float32 (cheaper than fnl_patch's float64, so the ratio is conservative). Both run in
this one process on the same weights. Prints JSON; `--out FILE` also writes it.

    python benchmarks/patch_speed.py --out benchmarks/results/patch_speed_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import transformers as tf

import hf_fnl
from report import BERT_LARGE, emit  # benchmarks/report.py

PRESETS = {
    "bert-base": dict(),
    "bert-large": BERT_LARGE,
}


def naive_patch_seconds(model: tf.BertModel, rank: int, layers: int) -> float:
    """SI of every head by explicit product and full SVD, for the first `layers` layers."""
    start = time.perf_counter()
    with torch.no_grad():
        for layer in model.encoder.layer[:layers]:
            att = layer.attention
            d_h = att.self.attention_head_size
            for h in range(att.self.num_attention_heads):
                rows = slice(h * d_h, (h + 1) * d_h)
                aug = lambda lin: torch.cat([lin.weight[rows].T, lin.bias[rows][None]])  # noqa: E731
                qk = aug(att.self.query) @ aug(att.self.key).T
                ov = att.self.value.weight[rows].T @ att.output.dense.weight[:, rows].T
                for P in (qk, ov):
                    U, S, Vh = torch.linalg.svd(P, full_matrices=False)
                    root = S[:rank].sqrt()
                    _ = (U[:, :rank] * root, Vh[:rank].T * root)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert-base,bert-large")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    results = []
    for name in args.models.split(","):
        config = tf.BertConfig(**PRESETS[name])
        model = tf.BertModel(config).eval()
        times = []
        for _ in range(args.repeats + 1):  # the first run warms up allocators and LAPACK
            fresh = copy.deepcopy(model)
            start = time.perf_counter()
            hf_fnl.fnl_patch(fresh, rank=0.5, progress=False)
            times.append(time.perf_counter() - start)
        patch_s = statistics.median(times[1:])
        rank = config.hidden_size // config.num_attention_heads // 2
        naive_s = naive_patch_seconds(model, rank, config.num_hidden_layers)
        results.append({
            "model": name,
            "params_before": sum(p.numel() for p in model.parameters()),
            "params_after": sum(p.numel() for p in fresh.parameters()),
            "fnl_patch_s_median": round(patch_s, 3),
            "fnl_patch_s_runs": [round(t, 3) for t in times[1:]],
            "naive_s": round(naive_s, 2),
            "speedup_vs_naive": round(naive_s / patch_s, 1),
        })
        print(json.dumps(results[-1]), flush=True)

    report = {
        "benchmark": "fnl_patch rank 0.5 vs explicit per-head product SVD",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
