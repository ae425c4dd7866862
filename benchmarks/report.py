"""What the benchmark scripts share: the JSON report (printed, and written with --out), device
synchronization and naming, and the BERT-large configuration."""

from __future__ import annotations

import json

import torch

BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer around it measures it."""
    if device == "cuda":
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else device


def emit(report: dict, out: str | None) -> None:
    print(json.dumps(report, indent=2))
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
