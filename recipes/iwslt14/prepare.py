"""IWSLT-14 German-English as fairseq's prepare-iwslt14.sh makes it, in Python, plus a joint BPE tokenizer.

From the raw IWSLT14 release (the `de-en/` folder of de-en.tgz: train.tags.de-en.{de,en} and the
IWSLT14.TED*.xml dev/test files):
  1. train: drop the <url>/<talkid>/<keywords> lines, strip <title>/<description> tags (the other
     header lines pass through, exactly as in fairseq's script); Moses-tokenize (sacremoses, with its
     default escaping of & ' " < > etc.); keep pairs of 1..175 tokens with a length ratio ≤ 1.5
     (clean-corpus-n.perl); lowercase;
  2. valid = every 23rd cleaned training pair, train = the rest;
  3. test = dev2010 + dev2012 + tst2010 + tst2011 + tst2012 (≈6,750 pairs), segments tokenized and
     lowercased (’ → ' first, XML entities left as the release has them, as fairseq did);
  4. a joint byte-pair encoding (tokenizers' BPE, `--vocab-size`, 10k by default) trained on the
     training split of both languages, saved as a transformers tokenizer.
Or, online, from the `datasets` hub copy IWSLT/iwslt2017 (de-en: its own validation and test) with
the same tokenization and cleaning.

Output: `<output-dir>/dataset` (a DatasetDict of columns de, en: tokenized lowercased text, and
en_raw: the untokenized reference for detokenized sacreBLEU) and `<output-dir>/tokenizer`.

    python recipes/iwslt14/prepare.py --raw-dir data/iwslt14-raw/de-en --output-dir data/iwslt14
    python recipes/iwslt14/prepare.py --dataset IWSLT/iwslt2017 --output-dir data/iwslt14-hub
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

SRC, TGT = "de", "en"
TEST_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's dictionary order: ids 0..3
WORD_END = "</w>"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw-dir", help="the de-en/ folder of the IWSLT14 release (train.tags.de-en.* and IWSLT14.TED*.xml)")
    source.add_argument("--dataset", help="a datasets hub id (IWSLT/iwslt2017) or a save_to_disk folder with a "
                        "`translation` column of {de, en}")
    p.add_argument("--dataset-config", default="iwslt2017-de-en")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--vocab-size", type=int, default=10000, help="joint BPE vocabulary size")
    p.add_argument("--max-tokens", type=int, default=175, help="clean-corpus-n max length (tokens, each side)")
    p.add_argument("--length-ratio", type=float, default=1.5, help="clean-corpus-n max length ratio")
    p.add_argument("--valid-every", type=int, default=23, help="every N-th cleaned training pair becomes validation")
    p.add_argument("--num-proc", type=int, default=None, help="processes for tokenization")
    return p.parse_args(argv)


# ---------------------------------------------------------------- reading the raw release

_DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>")
_STRIPPED_TAGS = re.compile(r"</?(?:title|description)>")


def read_train_tags(path: str) -> list[str]:
    """train.tags.de-en.{lang} with fairseq's grep/sed filters (other header lines pass through, as there)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return [_STRIPPED_TAGS.sub("", line) for line in lines if not any(tag in line for tag in _DROPPED_TAGS)]


_SEG = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')


def read_segments(path: str) -> list[str]:
    """The <seg> texts of an IWSLT mteval XML file, in order."""
    with open(path, encoding="utf-8") as f:
        return [m.group(1) for m in map(_SEG.search, f) if m]


def read_raw_release(raw_dir: str) -> dict[str, dict[str, list[str]]]:
    """{"train": {"de": [...], "en": [...]}, "test": {...}} of untokenized text from the release folder."""
    train = {lang: read_train_tags(os.path.join(raw_dir, f"train.tags.de-en.{lang}")) for lang in (SRC, TGT)}
    test = {SRC: [], TGT: []}
    for name in TEST_SETS:
        for lang in (SRC, TGT):
            path = os.path.join(raw_dir, f"IWSLT14.{name}.de-en.{lang}.xml")
            if not os.path.exists(path):
                found = sorted(glob.glob(os.path.join(raw_dir, "IWSLT14.*.xml")))
                raise FileNotFoundError(f"{path} is missing; the test set is {', '.join(TEST_SETS)} (found: {found})")
            test[lang].extend(read_segments(path))
    for split in (train, test):
        if len(split[SRC]) != len(split[TGT]):
            raise ValueError(f"{raw_dir}: {len(split[SRC])} German and {len(split[TGT])} English lines; the files are not parallel")
    return {"train": train, "test": test}


def read_hub(name: str, config: str) -> dict[str, dict[str, list[str]]]:
    from datasets import load_dataset, load_from_disk

    data = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, config)
    return {split: {lang: [pair[lang] for pair in data[split]["translation"]] for lang in (SRC, TGT)} for split in data}


# ---------------------------------------------------------------- tokenization and cleaning

_moses = {}


def moses_tokenize(text: str, lang: str) -> str:
    """tokenizer.perl -l lang (escaping on, as fairseq ran it), then lowercase.perl."""
    if lang not in _moses:
        from sacremoses import MosesTokenizer

        _moses[lang] = MosesTokenizer(lang=lang)
    return _moses[lang].tokenize(text, return_str=True, escape=True).lower()


def keep_pair(src: str, tgt: str, max_tokens: int, ratio: float) -> bool:
    """clean-corpus-n.perl with min 1: both sides 1..max_tokens tokens, length ratio ≤ ratio."""
    n, m = len(src.split()), len(tgt.split())
    return 0 < n <= max_tokens and 0 < m <= max_tokens and n <= ratio * m and m <= ratio * n


def tokenize_split(pairs: dict[str, list[str]], num_proc: int | None, straight_quotes: bool = False):
    """A datasets.Dataset of tokenized lowercased de/en plus the raw English, in the input order.

    straight_quotes: ’ → ' before tokenizing (fairseq's sed on the dev/test segments only)."""
    from datasets import Dataset

    def tokenize(text: str, lang: str) -> str:
        return moses_tokenize(text.replace("\u2019", "'") if straight_quotes else text, lang)

    raw = Dataset.from_dict({"de_raw": pairs[SRC], "en_raw": pairs[TGT]})
    return raw.map(lambda ex: {SRC: tokenize(ex["de_raw"], SRC), TGT: tokenize(ex["en_raw"], TGT)},
                   num_proc=num_proc, desc="moses tokenize").remove_columns("de_raw")


def clean(dataset, max_tokens: int, ratio: float, num_proc: int | None):
    return dataset.filter(lambda ex: keep_pair(ex[SRC], ex[TGT], max_tokens, ratio), num_proc=num_proc, desc="clean")


# ---------------------------------------------------------------- joint BPE

def train_bpe(texts, vocab_size: int):
    """Joint BPE over Moses-tokenized text; decoding joins subwords back into the tokenized text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix=WORD_END))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the text is already Moses-tokenized
    bpe.decoder = decoders.BPEDecoder(suffix=WORD_END)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, end_of_word_suffix=WORD_END,
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    eos = bpe.token_to_id("</s>")
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1024)


def main(argv=None) -> dict:
    from datasets import DatasetDict

    args = parse_args(argv)
    raw = read_raw_release(args.raw_dir) if args.raw_dir else read_hub(args.dataset, args.dataset_config)

    train = clean(tokenize_split(raw["train"], args.num_proc), args.max_tokens, args.length_ratio, args.num_proc)
    if args.raw_dir:  # fairseq: every 23rd cleaned training line is validation (awk NR%23 == 0)
        is_valid = [(i + 1) % args.valid_every == 0 for i in range(len(train))]
        splits = {"train": train.select([i for i, v in enumerate(is_valid) if not v]),
                  "validation": train.select([i for i, v in enumerate(is_valid) if v])}
    else:
        splits = {"train": train, "validation": tokenize_split(raw["validation"], args.num_proc, True)}
    splits["test"] = tokenize_split(raw["test"], args.num_proc, True)  # test pairs are never cleaned
    data = DatasetDict(splits)

    tokenizer = train_bpe((text for lang in (SRC, TGT) for text in data["train"][lang]), args.vocab_size)
    os.makedirs(args.output_dir, exist_ok=True)
    data.save_to_disk(os.path.join(args.output_dir, "dataset"))
    tokenizer.save_pretrained(os.path.join(args.output_dir, "tokenizer"))
    stats = {"pairs": {k: len(v) for k, v in data.items()}, "raw_train_pairs": len(raw["train"][SRC]),
             "vocab_size": len(tokenizer)}
    with open(os.path.join(args.output_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
