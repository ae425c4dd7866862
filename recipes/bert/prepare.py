"""Tokenize and pack a text corpus for BERT pretraining; save a `datasets` dataset to disk.

Sources: local text files (one paragraph or sentence per line, blank lines between documents),
or the Hub's Wikipedia and BookCorpus copies when online. Sequences are packed from consecutive
lines of a document into [CLS] tokens [SEP] of at most --max-seq-length tokens (masking happens at
training time, dynamically). With --nsp, each example is a sentence pair [CLS] A [SEP] B [SEP]
with B the true continuation or, half the time, a random segment (NVIDIA's recipe has NSP).

    python recipes/bert/prepare.py --text-files corpus/*.txt --train-tokenizer --vocab-size 30522 \
        --max-seq-length 128 --output-dir data/phase1
    python recipes/bert/prepare.py --dataset wikipedia --tokenizer bert-base-uncased --max-seq-length 512 \
        --output-dir data/phase2 --num-proc 16
"""

from __future__ import annotations

import argparse
import os
import random


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-files", nargs="+", help="local text files")
    source.add_argument("--dataset", choices=["wikipedia", "bookcorpus", "wikipedia+bookcorpus"],
                        help="Hub copies (needs network)")
    parser.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: train one with --train-tokenizer)")
    parser.add_argument("--train-tokenizer", action="store_true", help="train an uncased WordPiece on the text")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--nsp", action="store_true", help="sentence pairs with next-sentence labels")
    parser.add_argument("--validation-fraction", type=float, default=0.05, help="of the documents")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    if not args.tokenizer and not args.train_tokenizer:
        parser.error("give --tokenizer or --train-tokenizer")
    return args


def load_documents(args):
    """A `datasets.Dataset` with one document (list of lines) per row."""
    import datasets

    if args.text_files:
        documents, current = [], []
        for path in args.text_files:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        current.append(line)
                    elif current:
                        documents.append(current)
                        current = []
            if current:
                documents.append(current)
                current = []
        return datasets.Dataset.from_dict({"lines": documents})
    parts = []
    if "wikipedia" in args.dataset:
        wiki = datasets.load_dataset("wikimedia/wikipedia", "20231101.en", split="train")
        parts.append(wiki.map(lambda ex: {"lines": [l for l in ex["text"].split("\n") if l.strip()]},
                              remove_columns=wiki.column_names, num_proc=args.num_proc))
    if "bookcorpus" in args.dataset:
        books = datasets.load_dataset("bookcorpus/bookcorpus", split="train")
        parts.append(books.map(lambda ex: {"lines": [ex["text"]]}, remove_columns=books.column_names, num_proc=args.num_proc))
    return datasets.concatenate_datasets(parts)


def train_wordpiece(documents, vocab_size: int, output_dir: str):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator((line for doc in documents["lines"] for line in doc), vocab_size=vocab_size,
                                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    os.makedirs(output_dir, exist_ok=True)
    wordpiece.save_model(output_dir)
    tokenizer = BertTokenizerFast(vocab=os.path.join(output_dir, "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def pack(batch, tokenizer, max_len: int, nsp: bool, rng: random.Random):
    """Consecutive lines of each document → examples of at most max_len tokens."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = {"input_ids": [], "token_type_ids": []}
    if nsp:
        out["next_sentence_label"] = []
    budget = max_len - (3 if nsp else 2)
    all_segments = []
    for lines in batch["lines"]:
        ids = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
        segments, current = [], []
        for piece in ids:
            if current and len(current) + len(piece) > (budget // 2 if nsp else budget):
                segments.append(current)
                current = []
            current = current + piece
        if current:
            segments.append(current[: budget])
        all_segments.append(segments)
    for d, segments in enumerate(all_segments):
        for i, segment in enumerate(segments):
            if not nsp:
                ids = [cls, *segment[:budget], sep]
                out["input_ids"].append(ids)
                out["token_type_ids"].append([0] * len(ids))
                continue
            is_next = i + 1 < len(segments) and rng.random() < 0.5
            if is_next:
                second = segments[i + 1]
            else:  # a random segment of another document in the batch (or this one when alone)
                other = all_segments[rng.randrange(len(all_segments))]
                second = other[rng.randrange(len(other))]
            first, second = segment[: budget // 2], second[: budget - min(len(segment), budget // 2)]
            out["input_ids"].append([cls, *first, sep, *second, sep])
            out["token_type_ids"].append([0] * (len(first) + 2) + [1] * (len(second) + 1))
            out["next_sentence_label"].append(0 if is_next else 1)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    documents = load_documents(args)
    tokenizer_dir = os.path.join(args.output_dir, "tokenizer")
    if args.train_tokenizer:
        tokenizer = train_wordpiece(documents, args.vocab_size, tokenizer_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer.save_pretrained(tokenizer_dir)
    rng = random.Random(args.seed)
    # held out by document, so that no validation sequence shares a document with training
    split = documents.train_test_split(test_size=args.validation_fraction, seed=args.seed)
    split["validation"] = split.pop("test")
    split = split.map(pack, batched=True, batch_size=256, remove_columns=documents.column_names,
                      num_proc=args.num_proc, desc="tokenize and pack",
                      fn_kwargs=dict(tokenizer=tokenizer, max_len=args.max_seq_length, nsp=args.nsp, rng=rng))
    split.save_to_disk(os.path.join(args.output_dir, "dataset"))
    print(f"{len(split['train'])} training and {len(split['validation'])} validation sequences of <= "
          f"{args.max_seq_length} tokens, vocabulary {len(tokenizer)}; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
