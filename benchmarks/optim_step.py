"""Time one optimizer step over BERT-large's parameters (335M fp32 tensors of the real shapes).

Side by side in one process on the same tensors and gradients: hf_fnl's Flambe (decoupled FD on
the OV forms), Lamb and FDAdamW, torch's AdamW (foreach, and fused where this torch has it for the
device), and timm's Lamb when timm imports. The model is patched at full rank, so the shapes are
BERT-large's while the factor pairs exist for FD. Prints JSON; `--out FILE` also writes it.

    python benchmarks/optim_step.py --device cpu --out benchmarks/results/optim_step_cpu.json
    python benchmarks/optim_step.py --device cuda --out benchmarks/results/optim_step_h100.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

import torch
import transformers as tf

import hf_fnl
from hf_fnl.optim import FDAdamW, Flambe, Lamb, fnl_param_groups
from report import BERT_LARGE, device_name, emit, sync  # benchmarks/report.py


def timm_lamb():
    try:
        from timm.optim.lamb import Lamb as TimmLamb
    except Exception as error:  # timm needs torchvision, absent beside the CPU torch wheel
        return None, f"unavailable: {type(error).__name__}: {error}"
    return TimmLamb, None


def time_steps(optimizer, device: str, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        optimizer.step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on cuda, 5 on cpu)")
    parser.add_argument("--out")
    args = parser.parse_args()
    steps = args.steps or (20 if args.device == "cuda" else 5)

    torch.manual_seed(0)
    model = tf.BertForMaskedLM(tf.BertConfig(**BERT_LARGE))
    hf_fnl.fnl_patch(model, rank=1.0, progress=False)
    model.to(args.device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    n_params = sum(p.numel() for p in model.parameters())

    # fresh group dicts for every optimizer: torch fills each group with its optimizer's defaults in
    # place, so shared dicts would hand one optimizer's settings (foreach, eps, ...) to the next
    def fd_groups():
        return fnl_param_groups(model, weight_decay=0.01, fd_targets=("ov",))

    def plain_groups():
        return fnl_param_groups(model, weight_decay=0.01, fd_targets=())

    TimmLamb, timm_note = timm_lamb()
    candidates = {
        "torch_adamw_foreach": lambda: torch.optim.AdamW(plain_groups(), lr=1e-4, foreach=True),
        "torch_adamw_fused": lambda: torch.optim.AdamW(plain_groups(), lr=1e-4, fused=True),
        "hf_fnl_lamb": lambda: Lamb(plain_groups(), lr=1e-4),
        "hf_fnl_flambe_fd_ov": lambda: Flambe(fd_groups(), lr=1e-4),
        "hf_fnl_fdadamw_fd_ov": lambda: FDAdamW(fd_groups(), lr=1e-4),
    }
    if TimmLamb is not None:
        candidates["timm_lamb"] = lambda: TimmLamb(plain_groups(), lr=1e-4)

    results, notes = {}, {}
    if timm_note:
        notes["timm_lamb"] = timm_note
    for name, make in candidates.items():
        try:
            optimizer = make()
            times = time_steps(optimizer, args.device, warmup=2, steps=steps if name != "timm_lamb" else max(3, steps // 4))
        except (RuntimeError, TypeError, ValueError) as error:
            notes[name] = f"failed: {type(error).__name__}: {error}"
            continue
        finally:
            optimizer = None
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        results[name] = {"median_ms": round(statistics.median(times), 2), "runs_ms": [round(t, 2) for t in times]}
        print(json.dumps({name: results[name]}), flush=True)

    base = results["torch_adamw_foreach"]["median_ms"]
    for r in results.values():
        r["vs_torch_adamw_foreach"] = round(r["median_ms"] / base, 3)
    if "torch_adamw_fused" in results:
        for r in results.values():
            r["vs_torch_adamw_fused"] = round(r["median_ms"] / results["torch_adamw_fused"]["median_ms"], 3)
    if "timm_lamb" in results:
        for name in ("hf_fnl_lamb", "hf_fnl_flambe_fd_ov"):
            results[name]["speedup_vs_timm_lamb"] = round(results["timm_lamb"]["median_ms"] / results[name]["median_ms"], 1)
    report = {
        "benchmark": "optimizer step over BERT-large parameters (fp32)",
        "device": device_name(args.device),
        "cpu": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": n_params,
        "tensors": sum(1 for _ in model.parameters()),
        "fd_pairs": len(fd_groups()[0]["fd_pairs"]),
        "results": results,
        "notes": notes,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
