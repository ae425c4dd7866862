"""A tiny patched BERT trained with FNLTrainer: used in-process by the tests and, as a script, under
`accelerate launch` for the multi-process comparison. Prints nothing; writes the logged losses."""

from __future__ import annotations

import argparse
import json
import os

import torch
import transformers as tf

import hf_fnl
from hf_fnl.demo import markov_batches


class MLMData(torch.utils.data.Dataset):
    """Fixed masked-LM examples with the same number of masked tokens in each, so that a per-process
    mean loss averaged over processes equals the mean over the global batch."""

    def __init__(self, n: int = 96, seq: int = 16, masked: int = 3, seed: int = 0):
        tokens, _ = next(markov_batches(states=24, batch=n, seq=seq, seed=seed))
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for row in tokens:
            where = torch.randperm(seq, generator=g)[:masked]
            labels = torch.full_like(row, -100)
            labels[where] = row[where]
            self.items.append({"input_ids": row.index_fill(0, where, 4), "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_model(seed: int = 0):
    config = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = tf.BertForMaskedLM(config)
    # BertForMaskedLM takes **kwargs but averages its loss itself, ignoring num_items_in_batch; told it
    # accepts loss kwargs, Trainer would skip its own division by the accumulation steps and multiply
    # the loss by the process count (transformers 5.23)
    model.accepts_loss_kwargs = False
    return hf_fnl.fnl_patch(model, rank=0.5, progress=False)


def make_trainer(output_dir: str, fnl_optim: str | None, max_steps: int = 12, batch: int = 8, lr: float = 3e-3,
                 model=None, **kw) -> "hf_fnl.FNLTrainer":
    settings = dict(output_dir=output_dir, fnl_optim=fnl_optim, max_steps=max_steps, per_device_train_batch_size=batch,
                    learning_rate=lr, weight_decay=0.01, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                    use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    args = hf_fnl.FNLTrainingArguments(**{**settings, **kw})
    return hf_fnl.FNLTrainer(model=model or tiny_model(), args=args, train_dataset=MLMData())


def logged_losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--optim", default="flambe")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    a = parser.parse_args()
    trainer = make_trainer(os.path.dirname(a.out), a.optim, max_steps=a.steps, batch=a.batch)
    trainer.train()
    if trainer.is_world_process_zero():
        with open(a.out, "w") as f:
            json.dump(logged_losses(trainer), f)
