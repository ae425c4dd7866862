"""Fine-tune a pretrained BERT (patched by hf_fnl or not) on SQuAD v1.1 and report EM / F1.

The standard recipe: question and context packed to --max-seq-length with a --doc-stride sliding
window, start/end classification, answers decoded from the best valid span over all windows (at
most --max-answer-length tokens), scored by hf_fnl.squad_metric (the official v1.1 evaluation).

    accelerate launch recipes/bert/finetune_squad.py --model runs/bert-base-flambe/phase2/model \
        --dataset squad --output-dir runs/bert-base-flambe/squad
    python recipes/bert/finetune_squad.py --model MODEL --train-file train-v1.1.json \
        --validation-file dev-v1.1.json --output-dir out
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_linear_schedule_with_warmup

import hf_fnl  # importing it lets a patched checkpoint load with its patched shapes
from hf_fnl.loop import finish
from hf_fnl.squad_metric import squad_v1_scores


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pretrained model directory (with its tokenizer)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["squad"], help="the Hub copy (needs network)")
    source.add_argument("--train-file", help="SQuAD v1.1 JSON")
    p.add_argument("--validation-file", help="SQuAD v1.1 JSON (with --train-file)")
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--max-answer-length", type=int, default=30)
    p.add_argument("--per-device-batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    if args.train_file and not args.validation_file:
        p.error("--train-file needs --validation-file")
    return args


def read_squad(path: str) -> list[dict]:
    """Flatten SQuAD v1.1 JSON to {id, question, context, answers: {text, answer_start}} rows."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    return [{"id": qa["id"], "question": qa["question"], "context": para["context"],
             "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in data for para in article["paragraphs"] for qa in para["qas"]]


def load_examples(args) -> tuple[list[dict], list[dict]]:
    if args.dataset:
        import datasets

        squad = datasets.load_dataset("rajpurkar/squad")
        return list(squad["train"]), list(squad["validation"])
    return read_squad(args.train_file), read_squad(args.validation_file)


def encode(examples: list[dict], tokenizer, args, train: bool) -> tuple[dict, list]:
    """Windows of question + context; training windows get start/end token positions (0 = [CLS]
    when the answer is outside the window), evaluation windows keep offsets to decode answers."""
    enc = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                    truncation="only_second", max_length=args.max_seq_length, stride=args.doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    owners = enc.pop("overflow_to_sample_mapping")
    starts, ends, offsets = [], [], []
    for i, offset in enumerate(enc["offset_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        context = [o if s == 1 else None for o, s in zip(offset, sequence_ids)]
        offsets.append(context)
        if not train:
            continue
        answer = examples[owners[i]]["answers"]
        a_start = answer["answer_start"][0]
        a_end = a_start + len(answer["text"][0])
        tokens = [t for t, o in enumerate(context) if o is not None]
        if not tokens or context[tokens[0]][0] > a_start or context[tokens[-1]][1] < a_end:
            starts.append(0)
            ends.append(0)
            continue
        starts.append(next(t for t in tokens if context[t][1] > a_start))
        ends.append(next(t for t in reversed(tokens) if context[t][0] < a_end))
    enc.pop("offset_mapping")
    tensors = {k: torch.tensor(v) for k, v in enc.items()}
    if train:
        tensors["start_positions"], tensors["end_positions"] = torch.tensor(starts), torch.tensor(ends)
    return tensors, [(owners[i], offsets[i]) for i in range(len(offsets))]


def decode(examples, windows, start_logits, end_logits, max_answer_length: int, n_best: int = 20) -> dict[str, str]:
    """The best-scoring valid span (start ≤ end, inside the context, short enough) over all windows."""
    best: dict[int, tuple[float, str]] = {}
    for (owner, offsets), s_log, e_log in zip(windows, start_logits, end_logits):
        context = examples[owner]["context"]
        for s in torch.topk(s_log, min(n_best, len(s_log))).indices.tolist():
            for e in torch.topk(e_log, min(n_best, len(e_log))).indices.tolist():
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if owner not in best or score > best[owner][0]:
                    best[owner] = (score, context[offsets[s][0]: offsets[e][1]])
    return {ex["id"]: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    accelerator.print(f"{sum(p.numel() for p in model.parameters()):,} parameters"
                      f"{' (patched by hf_fnl)' if hf_fnl.is_fnl_patched(model) else ''}")

    train_examples, eval_examples = load_examples(args)
    train_tensors, _ = encode(train_examples, tokenizer, args, train=True)
    eval_tensors, eval_windows = encode(eval_examples, tokenizer, args, train=False)
    train_dl = torch.utils.data.DataLoader(
        [dict(zip(train_tensors, row)) for row in zip(*train_tensors.values())],
        batch_size=args.per_device_batch, shuffle=True)
    eval_dl = torch.utils.data.DataLoader(
        [dict(zip(eval_tensors, row)) for row in zip(*eval_tensors.values())], batch_size=args.per_device_batch)

    steps = args.max_steps or int(args.epochs * len(train_dl))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup * steps), steps)
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)

    model.train()
    losses, step = [], 0
    progress = tqdm(total=steps, desc="squad", disable=not accelerator.is_local_main_process)
    while step < steps:
        for batch in train_dl:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(accelerator.reduce(loss.detach(), "mean").item())
            step += 1
            progress.update(1)
            if step >= steps:
                break
    progress.close()

    model.eval()
    starts, ends = [], []
    with torch.no_grad():
        for batch in eval_dl:
            out = model(**batch)
            starts.append(accelerator.gather_for_metrics(out.start_logits).cpu())
            ends.append(accelerator.gather_for_metrics(out.end_logits).cpu())
    predictions = decode(eval_examples, eval_windows, torch.cat(starts), torch.cat(ends), args.max_answer_length)
    scores = squad_v1_scores(predictions, {ex["id"]: ex["answers"]["text"] for ex in eval_examples})
    results = {**scores, "steps": step, "first_loss": losses[0], "last_loss": losses[-1]}
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "squad_results.json"), "w") as f:
            json.dump({"results": results, "losses": losses, "predictions": predictions}, f, indent=2)
        print(json.dumps(results))
    model = accelerator.unwrap_model(model)  # no reference to the DDP wrapper may outlive finish()
    finish(accelerator)
    return results


if __name__ == "__main__":
    main()
