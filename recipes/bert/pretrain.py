"""BERT pretraining with LAMB or FLAMBé, optionally at halved MHA dimension (Khodak et al. 2021, Table 4).

NVIDIA's BERT recipe as the paper used it: two phases (sequence 128, then 512 starting from phase
1's checkpoint), global batch by gradient accumulation, linear warmup then (1 − progress)^0.5,
gradient-norm clip 1.0, weight decay 0.01 except biases and LayerNorm. `--mha-rank 0.5` patches
every attention head to half its size by SI of the random init; `--optimizer flambe` replaces
weight decay on the OV factor pairs by Frobenius decay (the paper's choice; `--fd-targets`).

    accelerate launch recipes/bert/pretrain.py --data-dir data/phase1 --preset bert-base --phase 1 \
        --mha-rank 0.5 --optimizer flambe --output-dir runs/base-half-flambe/phase1
    accelerate launch recipes/bert/pretrain.py --data-dir data/phase2 --preset bert-base --phase 2 \
        --init-from runs/base-half-flambe/phase1/model --optimizer flambe --output-dir runs/base-half-flambe/phase2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForPreTraining, DataCollatorForLanguageModeling

import hf_fnl
from hf_fnl.loop import endless, finish, load_checkpoint, save_checkpoint
from hf_fnl.optim import Flambe, Lamb, fnl_param_groups
from hf_fnl.plotting import new_figure, save_figure
from hf_fnl.trainer import nvidia_poly_schedule

PRESETS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}
# NVIDIA's LAMB phases (global batch in sequences)
PHASES = {
    1: dict(max_seq_length=128, global_batch=65536, lr=6e-3, max_steps=7038, warmup=0.2843),
    2: dict(max_seq_length=512, global_batch=32768, lr=4e-3, max_steps=1563, warmup=0.128),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="output of recipes/bert/prepare.py")
    p.add_argument("--preset", default="bert-base", choices=sorted(PRESETS))
    p.add_argument("--phase", type=int, default=1, choices=[1, 2])
    p.add_argument("--mha-rank", type=float, default=None, help="patch attention to this fraction of the head size")
    p.add_argument("--optimizer", default="lamb", choices=["lamb", "flambe"])
    p.add_argument("--fd-targets", default="ov", help="forms with Frobenius decay under flambe (ov, qk,ov)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--fd-coef", type=float, default=None, help="default: --weight-decay")
    p.add_argument("--init-from", help="phase 1 model directory (phase 2)")
    p.add_argument("--global-batch", type=int, help="sequences per optimizer step (default: the phase's)")
    p.add_argument("--per-device-batch", type=int, default=64)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-minutes", type=float, help="a training-time budget instead: --max-steps is set from the "
                   "measured time of a few steps, undone, before training (evaluation time is not counted)")
    p.add_argument("--eval-steps", type=int, help="also evaluate held-out MLM loss/accuracy every this many steps")
    p.add_argument("--warmup", type=float, help="warmup fraction of the steps")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--checkpoint-steps", type=int, default=500)
    p.add_argument("--resume-from", help="a checkpoint-N directory written by this script")
    p.add_argument("--report-to", default=None, help="accelerate tracker: tensorboard, wandb, ...")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cpu", action="store_true", help="train on the CPU; several CPU processes: "
                   "accelerate launch --multi_gpu --num_processes N ... --cpu (gloo)")
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    if args.max_minutes is not None and args.resume_from:
        p.error("a --max-minutes run resumes with --max-steps N, the step count it printed and saved in results.json")
    for key in ("global_batch", "lr", "max_steps", "warmup"):  # the phase's value unless given
        if getattr(args, key) is None:
            setattr(args, key, PHASES[args.phase][key])
    return args


def build_model(args, tokenizer, nsp: bool):
    """Phase 1: a fresh BERT from the preset (patched by SI of its random init); phase 2: phase 1's."""
    model_class = BertForPreTraining if nsp else BertForMaskedLM
    if args.init_from:  # after `import hf_fnl`, a patched checkpoint loads with its patched shapes
        return model_class.from_pretrained(args.init_from)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                        **PRESETS[args.preset])
    model = model_class(config)
    if args.mha_rank is not None:
        hf_fnl.fnl_patch(model, rank=args.mha_rank, progress=False)
    return model


@torch.no_grad()
def evaluate(model, dataloader, accelerator) -> dict:
    """Masked-LM loss and accuracy over the masked tokens of the validation split."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in dataloader:
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out.prediction_logits
        labels = batch["labels"]
        mask = labels != -100
        n = mask.sum()
        loss = torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
        hits = (logits.argmax(-1)[mask] == labels[mask]).sum()
        loss, hits, n = accelerator.reduce(torch.stack([loss, hits.float(), n.float()]), reduction="sum")
        loss_sum, correct, count = loss_sum + loss.item(), correct + hits.item(), count + n.item()
    model.train()
    return {"eval_mlm_loss": loss_sum / max(count, 1), "eval_mlm_accuracy": correct / max(count, 1)}


def seconds_per_step(model, batches, optimizer, accelerator, accumulation: int, max_grad_norm: float,
                     repeats: int = 2) -> float:
    """Time of one whole optimizer step (forward and backward over the accumulated micro-batches, clip,
    update), the fastest of `repeats` after a warm-up step. The weights are put back and the
    optimizer state, which Lamb/Flambe create at their first step, is dropped again."""
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    timings = []
    for _ in range(repeats + 1):
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        for _ in range(accumulation):
            with accelerator.accumulate(model):
                accelerator.backward(model(**next(batches)).loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
        accelerator.wait_for_everyone()
        timings.append(time.perf_counter() - start)
    accelerator.unwrap_model(model).load_state_dict(weights)
    optimizer.optimizer.state.clear()
    return accelerator.reduce(torch.tensor(min(timings[1:]), device=accelerator.device), reduction="mean").item()


def plot_losses(history: list[dict], path: str) -> None:
    fig, ax = new_figure(figsize=(7, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv=None) -> dict:
    from datasets import load_from_disk

    args = parse_args(argv)
    # 1. accelerator, gradient accumulation reaching the global batch
    per_step = args.per_device_batch * PartialState(cpu=args.cpu).num_processes
    accumulation = max(1, math.ceil(args.global_batch / per_step))
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=accumulation, log_with=args.report_to,
                              project_dir=args.output_dir)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    # 2. data: packed sequences, masked dynamically
    data = load_from_disk(os.path.join(args.data_dir, "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.data_dir, "tokenizer"))
    nsp = "next_sentence_label" in data["train"].column_names
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    train_dl = torch.utils.data.DataLoader(data["train"].with_format("torch"), batch_size=args.per_device_batch,
                                           shuffle=True, collate_fn=collator, drop_last=True)
    eval_dl = torch.utils.data.DataLoader(data["validation"].with_format("torch"), batch_size=args.per_device_batch,
                                          collate_fn=collator)

    # 3. model (patched by SI when --mha-rank), optimizer, schedule
    model = build_model(args, tokenizer, nsp)
    params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"{args.preset}{' (MHA rank %.2g)' % args.mha_rank if args.mha_rank else ''}: {params:,} parameters"
                      f"; global batch {accumulation * per_step} = {args.per_device_batch} x {accelerator.num_processes}"
                      f" x {accumulation} accumulation")
    if hf_fnl.is_fnl_patched(model) and accelerator.is_main_process:
        hf_fnl.print_fnl_summary(model)
    targets = tuple(t for t in args.fd_targets.split(",") if t) if args.optimizer == "flambe" else ()
    groups = fnl_param_groups(model, args.weight_decay, args.fd_coef, targets)
    optimizer = (Flambe if args.optimizer == "flambe" else Lamb)(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    batches = endless(train_dl)
    model.train()  # from_pretrained (phase 2) leaves it in eval mode
    if args.max_minutes is not None:  # as many steps as fit the budget at the measured speed
        step_seconds = seconds_per_step(model, batches, optimizer, accelerator, accumulation, args.max_grad_norm)
        args.max_steps = max(1, int(args.max_minutes * 60 / step_seconds))
        accelerator.print(f"{step_seconds:.3f} s per step: {args.max_steps} steps fit {args.max_minutes:g} minutes")
    scheduler = accelerator.prepare(nvidia_poly_schedule(optimizer, int(args.warmup * args.max_steps), args.max_steps))
    accelerator.init_trackers("bert_pretrain", config={k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str))})

    # 4. resume
    step = load_checkpoint(accelerator, args.resume_from) if args.resume_from else 0

    # 5. the loop: one optimizer step per `accumulation` micro-batches
    history, evals, eval_seconds, start = [], [], 0.0, time.perf_counter()
    seen_tokens = torch.zeros((), device=accelerator.device)
    progress = tqdm(total=args.max_steps, initial=step, desc="pretrain", disable=not accelerator.is_local_main_process)
    while step < args.max_steps:
        batch = next(batches)
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            seen_tokens += batch["attention_mask"].sum()
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        train_seconds = time.perf_counter() - start - eval_seconds
        if step % args.logging_steps == 0 or step == args.max_steps:
            entry = {"step": step, "minutes": train_seconds / 60,
                     "loss": accelerator.reduce(loss.detach(), reduction="mean").item(), "lr": scheduler.get_last_lr()[0],
                     "tokens_per_s": accelerator.reduce(seen_tokens, reduction="sum").item() / train_seconds}
            history.append(entry)
            accelerator.log(entry, step=step)
            progress.set_postfix(loss=f"{entry['loss']:.3f}")
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
            eval_start = time.perf_counter()
            evals.append({"step": step, "minutes": train_seconds / 60, **evaluate(model, eval_dl, accelerator)})
            accelerator.log(evals[-1], step=step)
            eval_seconds += time.perf_counter() - eval_start
        if step % args.checkpoint_steps == 0 and step < args.max_steps:
            save_checkpoint(accelerator, args.output_dir, step)
    progress.close()

    # 6. evaluate, save, plot
    train_minutes = (time.perf_counter() - start - eval_seconds) / 60
    evals.append({"step": step, "minutes": train_minutes, **evaluate(model, eval_dl, accelerator)})
    results = {**evals[-1], "params": params, "steps": step, "train_minutes": train_minutes,
               "final_train_loss": history[-1]["loss"] if history else None}
    model = accelerator.unwrap_model(model)  # no reference to the DDP wrapper may outlive finish()
    if accelerator.is_main_process:
        model.save_pretrained(os.path.join(args.output_dir, "model"))
        tokenizer.save_pretrained(os.path.join(args.output_dir, "model"))
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump({"results": results, "history": history, "evals": evals}, f, indent=2)
        if history:
            plot_losses(history, os.path.join(args.output_dir, "loss.png"))
        print(json.dumps(results))
    finish(accelerator)
    return results


if __name__ == "__main__":
    main()
