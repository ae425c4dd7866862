"""Train a Transformer on IWSLT-14 de-en with factorized attention, SI and Frobenius decay (Khodak et al. 2021, Fig. 4).

Models are built from config, never pretrained: `transformer_iwslt_de_en` (fairseq's: post-LN, 6+6
layers, d 512, 4 heads, FFN 1024; MarianConfig is fairseq's Transformer) and `transformer_small`
(the paper's: pre-LN, 2+2 layers, d 256, 4 heads, FFN 1024; M2M100Config is fairseq's Transformer
with normalize_before). Embeddings are shared between encoder, decoder and output.

The paper's grid:
  --rank R                attention as per-head QK/OV factor pairs of rank R (1.0: full rank, the
                          paper's factorized MHA; 0.5: halved heads)
  --linear-rank-scale S   FFN layers as U Vᵀ at rank S · min(m, n)
  --spectral-mha / --spectral-linear (or --no-…): SI of the random init, or a fresh default init
  --decay λ --decay-kind  wd (weight decay on every weight), fd-ov (Frobenius decay on the OV forms
                          and factorized linear layers, weight decay on the rest) or fd-qkov (QK too)
  --optimizer nag|adam    the paper's NAG (momentum 0.99, lr 0.25, clip 0.1; decay coupled through
                          the loss) or fairseq's Adam (0.9, 0.98), lr 5e-4; decay decoupled as AdamW

    accelerate launch recipes/iwslt14/train.py --data-dir data/iwslt14 --preset transformer_small \\
        --optimizer nag --rank 1.0 --decay 1e-5 --decay-kind fd-ov --output-dir runs/small-fd-ov-1e-5
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, M2M100Config, MarianConfig,
                          get_inverse_sqrt_schedule)

import hf_fnl
from hf_fnl.loop import endless, finish, load_checkpoint, save_checkpoint
from hf_fnl.optim import FDAdamW, fnl_param_groups
from hf_fnl.plotting import new_figure, save_figure
from hf_fnl.regularize import fd_penalty

SRC, TGT = "de", "en"
PRESETS = {
    "transformer_iwslt_de_en": dict(config=MarianConfig, d_model=512, layers=6, heads=4, ffn=1024, dropout=0.3),
    "transformer_small": dict(config=M2M100Config, d_model=256, layers=2, heads=4, ffn=1024, dropout=0.2),
    "tiny": dict(config=M2M100Config, d_model=32, layers=1, heads=4, ffn=64, dropout=0.1),
}
OPTIMIZERS = {  # the defaults each optimizer was tuned with
    "nag": dict(lr=0.25, clip_norm=0.1),
    "adam": dict(lr=5e-4, clip_norm=0.0),
}
FD_TARGETS = {"wd": (), "fd-ov": ("ov", "linear"), "fd-qkov": ("qk", "ov", "linear")}


def rank_arg(text: str) -> int | float:
    """'32' is an absolute rank, '0.5' a fraction of the head size."""
    return int(text) if text.isdigit() else float(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="output of recipes/iwslt14/prepare.py")
    p.add_argument("--preset", default="transformer_small", choices=sorted(PRESETS))
    p.add_argument("--rank", type=rank_arg, help="factorize attention at this per-head rank (1.0 = full rank)")
    p.add_argument("--forms", default="qk,ov", help="attention forms to factorize with --rank")
    p.add_argument("--linear-rank-scale", type=float, default=0.0, help="factorize the FFN layers at this rank scale")
    p.add_argument("--linear-targets", default=r".*layers\.\d+\.fc[12]", help="regex of the linear layers to factorize")
    p.add_argument("--spectral-mha", action=argparse.BooleanOptionalAction, default=True, help="SI of the attention factors")
    p.add_argument("--spectral-linear", action=argparse.BooleanOptionalAction, default=True, help="SI of the linear factors")
    p.add_argument("--decay", type=float, default=0.0, help="decay coefficient λ")
    p.add_argument("--decay-kind", default="wd", choices=sorted(FD_TARGETS))
    p.add_argument("--optimizer", default="nag", choices=sorted(OPTIMIZERS))
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.25 nag, 5e-4 adam)")
    p.add_argument("--momentum", type=float, default=0.99, help="nag")
    p.add_argument("--clip-norm", type=float, help="gradient-norm clip, 0 for none (default: 0.1 nag, 0 adam)")
    p.add_argument("--warmup-updates", type=int, default=4000, help="linear warmup, then inverse square root")
    p.add_argument("--max-updates", type=int, default=100_000)
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per micro-batch and process (padded)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, help="default: the preset's")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-len-a", type=float, default=1.2, help="generate at most a · source length + b tokens")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--eval-steps", type=int, default=1000, help="validation loss every N updates")
    p.add_argument("--eval-max-samples", type=int, help="translate at most N pairs per split (default: all)")
    p.add_argument("--checkpoint-steps", type=int, default=5000)
    p.add_argument("--resume-from", help="a checkpoint-N directory written by this script")
    p.add_argument("--logging-steps", type=int, default=100)
    p.add_argument("--report-to", default=None, help="accelerate tracker: tensorboard, wandb, ...")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu", action="store_true", help="train on the CPU; several CPU processes: "
                   "accelerate launch --multi_gpu --num_processes N ... --cpu (gloo)")
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    for key, value in OPTIMIZERS[args.optimizer].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_model(args, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    """A fresh Transformer of the preset, factorized as --rank / --linear-rank-scale ask (SI of its own init)."""
    preset = PRESETS[args.preset]
    config = preset["config"](
        vocab_size=vocab_size, d_model=preset["d_model"], encoder_layers=preset["layers"],
        decoder_layers=preset["layers"], encoder_attention_heads=preset["heads"], decoder_attention_heads=preset["heads"],
        encoder_ffn_dim=preset["ffn"], decoder_ffn_dim=preset["ffn"], dropout=args.dropout or preset["dropout"],
        attention_dropout=0.0, activation_dropout=0.0, activation_function="relu", scale_embedding=True,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
        decoder_start_token_id=eos_id,  # fairseq starts decoding from </s>
        forced_eos_token_id=eos_id,
    )
    if preset["config"] is MarianConfig:
        config.decoder_vocab_size, config.share_encoder_decoder_embeddings = vocab_size, True
    model = AutoModelForSeq2SeqLM.from_config(config)
    attention = dict(rank=args.rank, forms=tuple(args.forms.split(","))) if args.rank is not None else dict(forms=())
    linear = dict(linear_targets=args.linear_targets, linear_rank=args.linear_rank_scale) if args.linear_rank_scale else {}
    if attention["forms"] or linear:
        hf_fnl.fnl_patch(model, **attention, **linear, init="spectral" if args.spectral_mha else "default",
                         linear_init="spectral" if args.spectral_linear else "default", progress=False)
    return model


def build_optimizer(args, model):
    """Decay as --decay-kind says: FD replaces weight decay on the targeted factor pairs. NAG takes both
    through the loss gradient (coupled, science.md's rule for SGD); Adam both decoupled, as AdamW."""
    targets = FD_TARGETS[args.decay_kind]
    pairs = hf_fnl.fnl_factor_pairs(model, targets) if targets else []
    if targets and not pairs:
        raise ValueError(f"--decay-kind {args.decay_kind} decays factor pairs, and this model has none: add --rank "
                         "(e.g. --rank 1.0 for full-rank factorized attention) or --linear-rank-scale, or use --decay-kind wd")
    mode = "coupled" if args.optimizer == "nag" else "decoupled"
    groups = fnl_param_groups(model, args.decay, args.decay, targets, fd_mode=mode)
    if args.optimizer == "nag":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    else:
        optimizer = FDAdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    return optimizer, (pairs if mode == "coupled" and args.decay else [])


class TokenBatchSampler(torch.utils.data.Sampler):
    """fairseq's --max-tokens batching: pairs sorted by length, cut into batches of at most
    `max_tokens` padded tokens, the batch order reshuffled every epoch (the same on every process)."""

    def __init__(self, lengths: list[int], max_tokens: int, shuffle: bool, seed: int):
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.batches, batch, longest = [], [], 0
        for i in order:
            if batch and max(longest, lengths[i]) * (len(batch) + 1) > max_tokens:
                self.batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, lengths[i])
        if batch:
            self.batches.append(batch)

    def __iter__(self):
        order = range(len(self.batches))
        if self.shuffle:
            order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
            self.epoch += 1
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return len(self.batches)


def label_smoothed_loss(logits, labels, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed cross entropy, plain NLL), both means over the target tokens."""
    flat_logits, flat_labels = logits.flatten(0, 1).float(), labels.flatten()
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, label_smoothing=smoothing)
    nll = F.cross_entropy(flat_logits.detach(), flat_labels, ignore_index=-100)
    return loss, nll


@torch.no_grad()
def validation_loss(model, dataloader, accelerator, smoothing: float) -> dict:
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)
    for batch in dataloader:
        labels = batch.pop("labels")
        loss, nll = label_smoothed_loss(model(**batch).logits, labels, smoothing)
        n = (labels != -100).sum()
        totals += torch.stack([loss * n, nll * n, n.float()])
    loss, nll, n = accelerator.reduce(totals, reduction="sum").tolist()
    model.train()
    return {"valid_loss": loss / max(n, 1), "valid_nll": nll / max(n, 1), "valid_ppl": math.exp(min(nll / max(n, 1), 50))}


@torch.no_grad()
def translate(model, split, tokenizer, accelerator, args) -> list[str]:
    """Beam search over `split` (in order), BPE removed: Moses-tokenized lowercased English."""
    model.eval()
    columns = split.remove_columns([c for c in split.column_names if c not in ("input_ids", "attention_mask")])
    pad = DataCollatorForSeq2Seq(tokenizer)
    dataloader = accelerator.prepare(torch.utils.data.DataLoader(
        columns.add_column("index", list(range(len(columns)))), batch_size=args.eval_batch_size, collate_fn=pad))
    generator = accelerator.unwrap_model(model)
    hypotheses = {}
    for batch in tqdm(dataloader, desc="translate", disable=not accelerator.is_local_main_process):
        max_new = int(args.max_len_a * batch["input_ids"].shape[1] + args.max_len_b)
        out = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 num_beams=args.beam, max_new_tokens=max_new)
        out = accelerator.pad_across_processes(out, dim=1, pad_index=tokenizer.pad_token_id)
        out, index = accelerator.gather_for_metrics((out, batch["index"]))
        hypotheses.update(zip(index.tolist(), tokenizer.batch_decode(out, skip_special_tokens=True)))
    model.train()
    return [hypotheses[i].strip() for i in range(len(columns))]


def bleu(hypotheses: list[str], references: list[str], raw_references: list[str]) -> dict:
    """Tokenized BLEU on the lowercased Moses-tokenized text (what fairseq reports) and detokenized,
    lowercased sacreBLEU against the raw references."""
    import sacrebleu

    tokenized = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none")
    scores = {"bleu_tokenized": tokenized.score}
    try:
        from sacremoses import MosesDetokenizer
    except ImportError:  # the GPU machine has no sacremoses: say so in the results instead of a wrong number
        scores["sacrebleu_detok"] = None
        scores["sacrebleu_note"] = "sacremoses not installed: pip install sacremoses"
        return scores
    detok = MosesDetokenizer(lang=TGT)
    metric = sacrebleu.BLEU(lowercase=True)
    scores["sacrebleu_detok"] = metric.corpus_score([detok.detokenize(h.split()) for h in hypotheses],
                                                   [[html.unescape(r) for r in raw_references]]).score
    scores["sacrebleu_signature"] = str(metric.get_signature())
    return scores


def plot_history(history: list[dict], path: str) -> None:
    fig, ax = new_figure(figsize=(7, 4))
    train = [h for h in history if "loss" in h]
    valid = [h for h in history if "valid_loss" in h]
    ax.plot([h["step"] for h in train], [h["loss"] for h in train], label="train (label-smoothed)")
    ax.plot([h["step"] for h in valid], [h["valid_loss"] for h in valid], marker="o", label="validation (label-smoothed)")
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv=None) -> dict:
    from datasets import load_from_disk

    args = parse_args(argv)
    # 1. accelerator
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with=args.report_to, project_dir=args.output_dir)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    # 2. data: BPE ids of the prepared text, batched by tokens
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.data_dir, "tokenizer"))
    data = load_from_disk(os.path.join(args.data_dir, "dataset"))
    with accelerator.main_process_first():
        data = data.map(lambda batch: tokenizer(batch[SRC], text_target=batch[TGT]), batched=True, desc="BPE")
    model = build_model(args, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    pad, decoder_start = DataCollatorForSeq2Seq(tokenizer), model.config.decoder_start_token_id  # labels padded with -100

    def collator(features):  # teacher forcing: the decoder reads the labels shifted right behind </s>
        batch = pad(features)
        labels = batch["labels"]
        batch["decoder_input_ids"] = torch.cat([torch.full_like(labels[:, :1], decoder_start),
                                                labels[:, :-1].masked_fill(labels[:, :-1] == -100, tokenizer.pad_token_id)], 1)
        return batch
    model_columns = ["input_ids", "attention_mask", "labels"]

    def loader(split: str, max_tokens: int, shuffle: bool):
        lengths = [max(len(s), len(t)) for s, t in zip(data[split]["input_ids"], data[split]["labels"])]
        sampler = TokenBatchSampler(lengths, max_tokens, shuffle, args.seed)
        return torch.utils.data.DataLoader(data[split].select_columns(model_columns), batch_sampler=sampler,
                                           collate_fn=collator)

    train_dl, valid_dl = loader("train", args.max_tokens, True), loader("validation", args.max_tokens, False)

    # 3. model, optimizer, schedule
    params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"{args.preset}: {params:,} parameters; {len(data['train']):,} training pairs in "
                      f"{len(train_dl):,} batches of ≤{args.max_tokens} tokens")
    if hf_fnl.is_fnl_patched(model) and accelerator.is_main_process:
        hf_fnl.print_fnl_summary(model)
    optimizer, coupled_pairs = build_optimizer(args, model)
    scheduler = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=args.warmup_updates)
    model, optimizer, train_dl, valid_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, valid_dl, scheduler)
    accelerator.init_trackers("iwslt14", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))})

    # 4. resume
    step = load_checkpoint(accelerator, args.resume_from) if args.resume_from else 0

    # 5. the loop: one update per `gradient_accumulation_steps` micro-batches
    history, start = [], time.perf_counter()
    target_tokens = torch.zeros((), device=accelerator.device)
    batches = endless(train_dl)
    progress = tqdm(total=args.max_updates, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    model.train()
    while step < args.max_updates:
        batch = next(batches)
        with accelerator.accumulate(model):
            labels = batch.pop("labels")
            loss, nll = label_smoothed_loss(model(**batch).logits, labels, args.label_smoothing)
            if coupled_pairs:  # coupled FD: λ·½Σ‖A_h B_hᵀ‖², once per update (backward divides by the accumulation)
                loss = loss + args.decay * fd_penalty(coupled_pairs)
            accelerator.backward(loss)
            target_tokens += (labels != -100).sum()
            if accelerator.sync_gradients and args.clip_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % args.logging_steps == 0 or step == args.max_updates:
            losses = accelerator.reduce(torch.stack([loss.detach(), nll]), reduction="mean").tolist()
            entry = {"step": step, "loss": losses[0], "nll": losses[1], "lr": scheduler.get_last_lr()[0],
                     "target_tokens_per_s": accelerator.reduce(target_tokens, reduction="sum").item() / (time.perf_counter() - start)}
            history.append(entry)
            accelerator.log(entry, step=step)
            progress.set_postfix(loss=f"{entry['loss']:.3f}")
        if step % args.eval_steps == 0 or step == args.max_updates:
            entry = {"step": step, **validation_loss(model, valid_dl, accelerator, args.label_smoothing)}
            history.append(entry)
            accelerator.log(entry, step=step)
        if step % args.checkpoint_steps == 0 and step < args.max_updates:
            save_checkpoint(accelerator, args.output_dir, step)
    progress.close()

    # 6. translate validation and test with beam search, score, save, plot
    results = {"params": params, "updates": step}
    for split in ("validation", "test"):
        part = data[split] if args.eval_max_samples is None else data[split].select(range(min(args.eval_max_samples, len(data[split]))))
        hypotheses = translate(model, part, tokenizer, accelerator, args)
        results[split] = {**bleu(hypotheses, part[TGT], part["en_raw"]), "pairs": len(part)}
        if accelerator.is_main_process:
            with open(os.path.join(args.output_dir, f"{split}.hyp.txt"), "w") as f:
                f.write("\n".join(hypotheses) + "\n")
    accelerator.log({f"{split}/{k}": v for split in ("validation", "test") for k, v in results[split].items()
                     if isinstance(v, float)}, step=step)
    model = accelerator.unwrap_model(model)  # no reference to the DDP wrapper may outlive finish()
    if accelerator.is_main_process:
        model.save_pretrained(os.path.join(args.output_dir, "model"))
        tokenizer.save_pretrained(os.path.join(args.output_dir, "model"))
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump({"results": results, "args": vars(args), "history": history}, f, indent=2)
        if history:
            plot_history(history, os.path.join(args.output_dir, "loss.png"))
        print(json.dumps(results))
    finish(accelerator)
    return results


if __name__ == "__main__":
    main()
