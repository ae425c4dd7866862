"""recipes/iwslt14 on the shipped raw-release fixture: prepare (fairseq's rules) → train on two CPU
processes → beam search and BLEU; resume; NAG with coupled FD; the sweep's table and plot."""

from __future__ import annotations

import json
import os

import pytest
import torch

import hf_fnl

from .launch import ROOT, launcher, load_recipe, run

RECIPE = os.path.join(ROOT, "recipes", "iwslt14")
RAW = os.path.join(ROOT, "tests", "fixtures", "iwslt14", "de-en")
UNEQUAL_LINES = (88, 155, 271)  # the fixture's pairs with a length ratio above 1.5 (1-based lines)


prepare, train, sweep = (load_recipe("iwslt14", name) for name in ("prepare", "train", "sweep"))


TINY = ["--preset", "tiny", "--cpu", "--warmup-updates", "5", "--max-tokens", "400", "--logging-steps", "5",
        "--beam", "2"]


def train_run(data_dir, out, *extra, launch=None) -> dict:
    run([os.path.join(RECIPE, "train.py"), "--data-dir", str(data_dir), *TINY, "--output-dir", str(out), *extra], launch)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("iwslt14") / "data"
    run([os.path.join(RECIPE, "prepare.py"), "--raw-dir", RAW, "--vocab-size", "1000", "--output-dir", str(out)])
    return out


# ---------------------------------------------------------------- prepare.py: fairseq's rules

def test_train_tags_filters_are_fairseqs():
    lines = prepare.read_train_tags(os.path.join(RAW, "train.tags.de-en.en"))
    raw = open(os.path.join(RAW, "train.tags.de-en.en"), encoding="utf-8").read().splitlines()
    assert len(lines) == len(raw) - 3 * 5  # five talks lose their <url>, <talkid> and <keywords> lines
    assert not any(tag in line for line in lines for tag in ("<url>", "<talkid>", "<keywords>", "<title>", "</description>"))
    assert sum(line.startswith("<speaker>") for line in lines) == 5  # other header lines pass through, as in fairseq


def test_moses_tokenization_escapes_and_lowercases_and_cleaning_is_clean_corpus_n():
    assert prepare.moses_tokenize("It's 25 percent & \"more\".", "en") == "it &apos;s 25 percent &amp; &quot; more &quot; ."
    assert prepare.keep_pair("a b c", "x y", 175, 1.5) and not prepare.keep_pair("a b c d", "x y", 175, 1.5)
    assert not prepare.keep_pair("", "x", 175, 1.5) and not prepare.keep_pair("a " * 176, "x " * 176, 175, 1.5)


def test_prepared_splits(data):
    from datasets import load_from_disk

    stats = json.loads((data / "stats.json").read_text())
    assert stats["raw_train_pairs"] == 265
    cleaned = 265 - len(UNEQUAL_LINES)
    assert stats["pairs"] == {"train": cleaned - cleaned // 23, "validation": cleaned // 23, "test": 41}
    splits = load_from_disk(str(data / "dataset"))
    # validation is every 23rd cleaned pair: rebuild the cleaned corpus independently and compare
    de, en = (prepare.read_train_tags(os.path.join(RAW, f"train.tags.de-en.{lang}")) for lang in ("de", "en"))
    pairs = [(prepare.moses_tokenize(s, "de"), prepare.moses_tokenize(t, "en")) for s, t in zip(de, en)]
    pairs = [p for p in pairs if prepare.keep_pair(*p, 175, 1.5)]
    assert list(zip(splits["validation"]["de"], splits["validation"]["en"])) == pairs[22::23]
    assert splits["train"]["en"] == [t for i, (_, t) in enumerate(pairs) if (i + 1) % 23]
    # test: the five XML sets in fairseq's order, ’ → ' before tokenizing, the raw reference kept for sacreBLEU
    segments = [s for name in prepare.TEST_SETS for s in prepare.read_segments(os.path.join(RAW, f"IWSLT14.{name}.de-en.en.xml"))]
    assert splits["test"]["en_raw"] == segments
    assert any("\u2019" in s for s in segments) and not any("\u2019" in s for s in splits["test"]["en"])
    assert all(s == s.lower() for s in splits["test"]["de"])


def test_joint_bpe_tokenizer_round_trips_the_tokenized_text(data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    from datasets import load_from_disk

    train_split = load_from_disk(str(data / "dataset"))["train"]
    for lang in ("de", "en"):
        for text in train_split[lang][:50]:
            ids = tokenizer(text)["input_ids"]
            assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's order


def test_hub_copy_path_on_a_local_save_to_disk(tmp_path):
    from datasets import Dataset, DatasetDict, load_from_disk

    raw = prepare.read_raw_release(RAW)

    def split(pairs):
        return Dataset.from_dict({"translation": [{"de": s, "en": t} for s, t in zip(pairs["de"], pairs["en"])]})

    DatasetDict(train=split(raw["train"]), validation=split(raw["test"]), test=split(raw["test"])).save_to_disk(str(tmp_path / "hub"))
    stats = prepare.main(["--dataset", str(tmp_path / "hub"), "--vocab-size", "600", "--output-dir", str(tmp_path / "out")])
    assert stats["pairs"] == {"train": 265 - len(UNEQUAL_LINES), "validation": 41, "test": 41}
    assert load_from_disk(str(tmp_path / "out" / "dataset"))["test"]["en_raw"] == raw["test"]["en"]


# ---------------------------------------------------------------- train.py pieces

def test_token_batches_respect_the_budget_cover_every_pair_and_reshuffle():
    lengths = [int(x) for x in torch.randint(1, 60, (500,), generator=torch.Generator().manual_seed(0))]
    sampler = train.TokenBatchSampler(lengths, 256, shuffle=True, seed=3)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(max(lengths[i] for i in b) * len(b) <= 256 for b in batches)
    assert first != second and sorted(map(tuple, first)) == sorted(map(tuple, second))
    again = train.TokenBatchSampler(lengths, 256, shuffle=True, seed=3)
    assert list(again) == first  # every process draws the same order


def test_bleu_scores():
    refs = ["the cat sat on the mat .", "it &apos;s a good day ."]
    scores = train.bleu(refs, refs, ["The cat sat on the mat.", "It's a good day."])
    assert scores["bleu_tokenized"] == pytest.approx(100.0) and scores["sacrebleu_detok"] == pytest.approx(100.0)
    assert train.bleu(["a b c d"], ["w x y z"], ["W x y z"])["bleu_tokenized"] == 0.0


@pytest.mark.parametrize("preset", sorted(train.PRESETS))
def test_every_preset_builds_and_runs(preset):
    args = train.parse_args(["--data-dir", "-", "--output-dir", "-", "--preset", preset])
    model = train.build_model(args, 60, pad_id=1, bos_id=0, eos_id=2).eval()
    spec, config = train.PRESETS[preset], model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.encoder_ffn_dim) == (spec["d_model"], spec["layers"], spec["layers"], spec["heads"], spec["ffn"])
    assert config.decoder_start_token_id == config.eos_token_id == 2 and config.pad_token_id == 1
    source = torch.randint(3, 60, (2, 7))
    logits = model(input_ids=source, decoder_input_ids=source[:, :5]).logits
    assert logits.shape == (2, 5, 60)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # shared, as fairseq's


def optimizer_for(*flags):
    args = train.parse_args(["--data-dir", "-", "--output-dir", "-", "--preset", "tiny", *flags])
    model = train.build_model(args, 50, pad_id=1, bos_id=0, eos_id=2)
    return model, *train.build_optimizer(args, model)


def test_decay_kinds_choose_the_decayed_tensors():
    model, adam, coupled = optimizer_for("--rank", "1.0", "--linear-rank-scale", "0.5", "--optimizer", "adam",
                                         "--decay", "1e-4", "--decay-kind", "fd-ov")
    fd_group = next(g for g in adam.param_groups if g.get("fd_pairs"))
    forms = {p.form for p in hf_fnl.fnl_factor_pairs(model, ("ov", "linear"))}
    assert forms == {"ov", "linear"} and not coupled and fd_group["fd_coef"] == 1e-4
    assert len(fd_group["fd_pairs"]) == len(hf_fnl.fnl_factor_pairs(model, ("ov", "linear")))

    model, nag, coupled = optimizer_for("--rank", "0.5", "--optimizer", "nag", "--decay", "1e-4", "--decay-kind", "fd-qkov")
    assert isinstance(nag, torch.optim.SGD) and nag.defaults["nesterov"] and nag.defaults["momentum"] == 0.99
    assert {p.form for p in coupled} == {"qk", "ov"}
    factor_ids = {id(t) for p in coupled for t in (p.a.weight, p.b.weight)}
    for group in nag.param_groups:  # FD through the loss replaces weight decay on the factors
        if any(id(p) in factor_ids for p in group["params"]):
            assert group["weight_decay"] == 0.0 and "fd_pairs" not in group

    with pytest.raises(ValueError, match="add --rank"):
        optimizer_for("--decay", "1e-4", "--decay-kind", "fd-ov")


def test_no_spectral_flags_give_default_init():
    model, _, _ = optimizer_for("--rank", "0.5", "--linear-rank-scale", "0.5", "--no-spectral-linear")
    spec = model.config.fnl
    assert spec["init"] == "spectral" and spec["linear_init"] == "default"
    assert all(m["si_error"] is not None for m in spec["modules"].values())


# ---------------------------------------------------------------- end to end

def test_two_cpu_processes_train_translate_and_score(data, tmp_path):
    out = tmp_path / "ddp"
    report = train_run(data, out, "--rank", "0.5", "--linear-rank-scale", "0.5", "--optimizer", "adam", "--lr", "3e-3",
                       "--decay", "1e-4", "--decay-kind", "fd-ov", "--max-updates", "40", "--eval-steps", "20",
                       "--checkpoint-steps", "20", launch=launcher(2))
    train_losses = [h["loss"] for h in report["history"] if "loss" in h]
    valid_losses = [h["valid_loss"] for h in report["history"] if "valid_loss" in h]
    assert len(train_losses) == 8 and train_losses[-1] < train_losses[0] - 0.5, train_losses
    assert len(valid_losses) == 2 and valid_losses[1] < valid_losses[0]
    results = report["results"]
    for split, pairs in (("validation", 11), ("test", 41)):
        assert results[split]["pairs"] == pairs and 0 <= results[split]["bleu_tokenized"] <= 100
        assert 0 <= results[split]["sacrebleu_detok"] <= 100
        assert len((out / f"{split}.hyp.txt").read_text().splitlines()) == pairs
    assert (out / "loss.png").stat().st_size > 1000 and (out / "checkpoint-20" / "step.txt").exists()
    model = hf_fnl.from_pretrained(str(out / "model"))  # the factorized model reloads exactly, no SVD redone
    assert sum(p.numel() for p in model.parameters()) == results["params"]
    assert {m["rank"] for m in model.config.fnl["modules"].values()} == {4}  # tiny: head size 8, halved


def test_resume_with_gradient_accumulation_continues_from_the_checkpoint(data, tmp_path):
    flags = ["--rank", "1.0", "--optimizer", "nag", "--lr", "0.05", "--decay", "1e-4", "--decay-kind", "fd-qkov",
             "--max-updates", "20", "--eval-steps", "20", "--checkpoint-steps", "10", "--eval-max-samples", "4",
             "--gradient-accumulation-steps", "2"]
    full = train_run(data, tmp_path / "full", *flags)
    resumed = train_run(data, tmp_path / "resumed", *flags, "--resume-from", str(tmp_path / "full" / "checkpoint-10"))
    assert [h["step"] for h in resumed["history"] if "loss" in h] == [15, 20]
    assert resumed["results"]["updates"] == full["results"]["updates"] == 20
    first = [h["loss"] for h in full["history"] if "loss" in h][0]
    assert [h["loss"] for h in resumed["history"] if "loss" in h][0] < first  # it starts from the trained weights


def test_sweep_runs_collects_and_plots(data, tmp_path):
    root = tmp_path / "sweep"
    rows = sweep.main(["--output-root", str(root), "--coefs", "1e-4", "--kinds", "wd,fd-ov", "--si", "on", "--run",
                       "--", "--data-dir", str(data), *TINY, "--rank", "1.0", "--optimizer", "adam", "--lr", "3e-3",
                       "--max-updates", "5", "--eval-steps", "5", "--eval-max-samples", "4"])
    assert [(r["kind"], r["coef"]) for r in rows] == [("none", 0.0), ("wd", 1e-4), ("fd-ov", 1e-4)]
    table = (root / "sweep.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "| fd-ov | 0.0001 | yes |" in table[-1]
    assert (root / "sweep.png").stat().st_size > 1000
    args = json.loads((root / "fd-ov-0.0001-si" / "results.json").read_text())["args"]
    assert args["decay"] == 1e-4 and args["decay_kind"] == "fd-ov" and args["spectral_mha"]
    assert sweep.main(["--output-root", str(root), "--coefs", "1e-4", "--kinds", "wd,fd-ov", "--si", "on"]) == rows
