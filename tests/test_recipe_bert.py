"""recipes/bert end to end on the shipped English fixture: prepare → phase 1 (patched, FLAMBé) →
phase 2 from phase 1's checkpoint, and phase 1 on two CPU processes; loss falls, evaluation runs."""

from __future__ import annotations

import json
import os

import pytest

from .launch import ROOT, launcher, run

RECIPE = os.path.join(ROOT, "recipes", "bert")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "english.txt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert")
    for seq in (64, 128):
        run([os.path.join(RECIPE, "prepare.py"), "--text-files", FIXTURE, "--train-tokenizer", "--vocab-size", "400",
             "--max-seq-length", str(seq), "--output-dir", str(out / f"data{seq}")])
    return out


def pretrain(data_dir, out, *extra, launch=None):
    run([os.path.join(RECIPE, "pretrain.py"), "--data-dir", str(data_dir), "--preset", "tiny", "--cpu",
         "--global-batch", "16", "--per-device-batch", "8", "--lr", "2e-2", "--logging-steps", "5",
         "--output-dir", str(out), *extra], launch)
    return json.loads((out / "results.json").read_text())


def test_two_phases_with_flambe_at_halved_mha(data):
    phase1 = pretrain(data / "data64", data / "p1", "--phase", "1", "--mha-rank", "0.5", "--optimizer", "flambe",
                      "--max-steps", "40", "--checkpoint-steps", "20")
    losses = [h["loss"] for h in phase1["history"]]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses
    results = phase1["results"]
    assert 0 < results["eval_mlm_loss"] < losses[0] and 0 <= results["eval_mlm_accuracy"] <= 1
    assert all(h["tokens_per_s"] > 0 for h in phase1["history"])
    assert (data / "p1" / "loss.png").stat().st_size > 1000 and (data / "p1" / "checkpoint-20" / "step.txt").exists()
    config = json.loads((data / "p1" / "model" / "config.json").read_text())
    assert {m["rank"] for m in config["fnl"]["modules"].values()} == {8}  # tiny: head size 16, halved

    phase2 = pretrain(data / "data128", data / "p2", "--phase", "2", "--optimizer", "flambe", "--max-steps", "10",
                      "--init-from", str(data / "p1" / "model"))
    assert phase2["results"]["params"] == results["params"]  # phase 2 continues the halved model
    assert phase2["history"][0]["loss"] < losses[0]  # and starts from phase 1's weights


def test_phase1_on_two_cpu_processes(data):
    result = pretrain(data / "data64", data / "ddp", "--phase", "1", "--optimizer", "lamb", "--max-steps", "10",
                      "--per-device-batch", "4", launch=launcher(2))
    assert len(result["history"]) == 2 and result["results"]["steps"] == 10


def test_squad_finetune_of_the_pretrained_halved_model(data):
    if not (data / "p1" / "model").exists():
        pretrain(data / "data64", data / "p1", "--phase", "1", "--mha-rank", "0.5", "--optimizer", "flambe",
                 "--max-steps", "40")
    squad = os.path.join(ROOT, "tests", "fixtures", "squad_tiny.json")
    out = data / "squad"
    result = run([os.path.join(RECIPE, "finetune_squad.py"), "--model", str(data / "p1" / "model"), "--cpu",
                  "--train-file", squad, "--validation-file", squad, "--max-seq-length", "64", "--doc-stride", "32",
                  "--per-device-batch", "4", "--max-steps", "30", "--lr", "1e-3", "--output-dir", str(out)])
    assert "patched by hf_fnl" in result.stdout
    report = json.loads((out / "squad_results.json").read_text())
    results = report["results"]
    assert 0 <= results["exact_match"] <= results["f1"] <= 100
    assert results["last_loss"] < results["first_loss"]
    assert set(report["predictions"]) == {f"q{i}" for i in range(13)}
