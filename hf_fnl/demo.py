"""A one-minute tour: patch a small BERT, check exactness at full rank, print the summary, train a few steps.

Run with `python -m hf_fnl.demo` (or `make demo`). Everything is built from a config: no Hub access.
"""

from __future__ import annotations

import copy
import time

import torch
from transformers import BertConfig, BertForMaskedLM

import hf_fnl


def markov_batches(states: int, batch: int, seq: int, seed: int = 0):
    """Token sequences (ids 5..5+states) from a fixed sparse Markov chain: structure to learn from."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(5, 5 + states, (5 + states, 3), generator=g)
    while True:
        tokens = torch.empty(batch, seq, dtype=torch.long)
        tokens[:, 0] = torch.randint(5, 5 + states, (batch,), generator=g)
        for t in range(1, seq):
            pick = torch.randint(0, 3, (batch,), generator=g)
            tokens[:, t] = successors[tokens[:, t - 1], pick]
        labels = tokens.clone()
        masked = torch.rand(batch, seq, generator=g) < 0.15
        labels[~masked] = -100
        inputs = tokens.masked_fill(masked, 4)  # 4 plays [MASK]
        yield inputs, labels


def main(steps: int = 40) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=128)
    model = BertForMaskedLM(config).eval()
    data = markov_batches(states=32, batch=16, seq=64)
    x, labels = next(data)

    print("1) full rank: the patched model is the original model, reparametrized")
    full = hf_fnl.fnl_patch(copy.deepcopy(model), hf_fnl.FNLConfig(rank=1.0, progress=False))
    with torch.no_grad():
        diff = (full(x).logits - model(x).logits).abs().max().item()
    print(f"   max |logits(patched) - logits(original)| = {diff:.2e}\n")

    print("2) rank 0.5: every head keeps its count, each QK and OV form gets rank d_h/2 by SI")
    start = time.perf_counter()
    hf_fnl.fnl_patch(model, hf_fnl.FNLConfig(rank=0.5))
    print(f"   patched in {time.perf_counter() - start:.2f} s\n")
    hf_fnl.print_fnl_summary(model)

    print(f"\n3) {steps} steps of masked-LM training of the rank-0.5 model (AdamW, lr 1e-3)")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(1, steps + 1):
        loss = model(x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1 or step % 10 == 0:
            print(f"   step {step:3d}  loss {loss.item():.3f}")
        x, labels = next(data)


if __name__ == "__main__":
    main()
