"""Forward+backward time of FactorizedLinear vs nn.Linear, against what the FLOP count predicts.

For each size n×n and rank r: t_dense for nn.Linear(n, n), t_fact for FactorizedLinear(n, n, r),
and t_same for a dense layer with the factorized layer's FLOPs (n × 2r outputs). The FLOP count
predicts t_fact ≈ t_dense · 2r/n; `vs_flop_prediction` = t_fact / that (goal ≤ 1.10), and
`vs_same_flops_dense` = t_fact / t_same. Prints JSON; `--out FILE` also writes it.

    python benchmarks/factorized_linear.py --device cpu --out benchmarks/results/factorized_linear_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from hf_fnl.layers import FactorizedLinear
from report import device_name, emit, sync  # benchmarks/report.py


def fwd_bwd_ms(layer: nn.Module, x: torch.Tensor, device: str, repeats: int) -> float:
    """Median forward+backward time; gradients are cleared outside the timer, so that no run pays
    for accumulating into the previous run's gradients."""
    with torch.no_grad():
        grad_out = torch.randn_like(layer(x))
    times = []
    for i in range(2 + repeats):  # two warm-up runs
        x.grad = None
        layer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        layer(x).backward(grad_out)
        sync(device)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated n (default: 1024,2048 on cpu, 2048,4096,8192 on cuda)")
    parser.add_argument("--tokens", type=int, default=None, help="rows of x (default: 1024 on cpu, 8192 on cuda)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    sizes = [int(s) for s in (args.sizes or ("2048,4096,8192" if cuda else "1024,2048")).split(",")]
    tokens = args.tokens or (8192 if cuda else 1024)
    dtype = getattr(torch, args.dtype)
    factory = dict(device=args.device, dtype=dtype)

    rows = []
    for n in sizes:
        x = torch.randn(tokens, n, **factory, requires_grad=True)
        t_dense = fwd_bwd_ms(nn.Linear(n, n, **factory), x, args.device, args.repeats)
        for r in (n // 16, n // 8, n // 4):
            t_fact = fwd_bwd_ms(FactorizedLinear(n, n, r, **factory), x, args.device, args.repeats)
            t_same = fwd_bwd_ms(nn.Linear(n, 2 * r, **factory), x, args.device, args.repeats)
            predicted = t_dense * 2 * r / n
            rows.append({"n": n, "rank": r, "dense_ms": round(t_dense, 3), "factorized_ms": round(t_fact, 3),
                         "same_flops_dense_ms": round(t_same, 3),
                         "vs_flop_prediction": round(t_fact / predicted, 3), "vs_same_flops_dense": round(t_fact / t_same, 3)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "FactorizedLinear vs nn.Linear forward+backward", "device": device_name(args.device),
              "dtype": args.dtype, "tokens": tokens, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "results": rows}
    emit(report, args.out)


if __name__ == "__main__":
    main()
