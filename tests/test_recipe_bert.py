"""recipes/bert end to end on the shipped English fixture: prepare → phase 1 (patched, FLAMBé) →
phase 2 from phase 1's checkpoint, and phase 1 on two CPU processes; loss falls, evaluation runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .launch import ENV, ROOT, launcher, load_recipe, run

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


def test_time_budget_and_the_comparison_table(data, tmp_path):
    root = tmp_path / "compare"
    run([os.path.join(RECIPE, "compare.py"), "--output-root", str(root), "--run", "--",
         "--data-dir", str(data / "data64"), "--preset", "tiny", "--cpu", "--global-batch", "8", "--per-device-batch", "8",
         "--lr", "2e-2", "--warmup", "0.1", "--max-minutes", "0.1", "--eval-steps", "3", "--logging-steps", "1"])
    table = (root / "comparison.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["lamb-full", "lamb-half", "flambe-half"]
    for name in ("lamb-full", "lamb-half", "flambe-half"):
        record = json.loads((root / name / "results.json").read_text())
        steps, evals = record["results"]["steps"], record["evals"]
        assert steps >= 3 and [e["step"] for e in evals] == [*range(3, steps, 3), steps]
        minutes = [e["minutes"] for e in evals]
        assert minutes == sorted(minutes) and 0 < minutes[-1] == record["results"]["train_minutes"]
        assert record["results"]["eval_mlm_loss"] == evals[-1]["eval_mlm_loss"]
    half, full = (json.loads((root / n / "results.json").read_text())["results"]["params"] for n in ("lamb-half", "lamb-full"))
    assert half < full
    assert (root / "comparison.png").stat().st_size > 5000
    # collecting again runs nothing new and rewrites the same table
    again = run([os.path.join(RECIPE, "compare.py"), "--output-root", str(root)])
    assert "pretrain.py" not in again.stdout and (root / "comparison.md").read_text().splitlines() == table


def test_a_time_budget_run_resumes_only_with_its_step_count(data, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(RECIPE, "pretrain.py"), "--data-dir", str(data / "data64"),
                             "--max-minutes", "1", "--resume-from", "x", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "resumes with --max-steps N" in result.stderr


def test_corpus_from_html_and_text_documentation(tmp_path):
    build_corpus = load_recipe("bert", "build_corpus")
    prose = "This paragraph explains how the module reads its configuration at start-up."
    (tmp_path / "docs" / "_sources").mkdir(parents=True)
    (tmp_path / "docs" / "page.html").write_text(f"""<html><body>
      <div class="related"><p>Navigation: previous topic, next topic and the index of modules</p></div>
      <div class="body"><h1>Title</h1>
        <p>{prose.replace('configuration', '<code>configuration</code>')}</p>
        <pre>for line in file: print(line) and several more words of code</pre>
        <ul><li><p>A list item that is long enough to be a paragraph of prose.</li></ul>
        <p>Too short.</p><p>x = 1; y = 2; z = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]; w = {{}}</p>
        <p>{prose}</p>
      </div><footer><p>Copyright 2001-2024 the Python Software Foundation and its contributors.</p></footer>
    </body></html>""")
    (tmp_path / "docs" / "_sources" / "page.rst.txt").write_text(f"{prose}\n")
    (tmp_path / "docs" / "notes.txt").write_text(
        "First paragraph of the plain text notes,\nwrapped over two lines of the file.\n\n"
        "    indented_literal_block(with, code) that is long enough to count\n\n"
        f"{prose}\n")
    out = tmp_path / "corpus.txt"
    stats = build_corpus.main([str(tmp_path / "docs"), "--output", str(out)])
    # notes.txt comes first (sorted); the HTML's repeat of the prose, the navigation, footer, code, the
    # short and the symbol-heavy paragraphs, and the Sphinx _sources copy are left out
    assert out.read_text() == ("First paragraph of the plain text notes, wrapped over two lines of the file.\n"
                               f"{prose}\n\nA list item that is long enough to be a paragraph of prose.\n\n")
    assert stats == {"files": 2, "documents": 2, "paragraphs": 3, "words": 14 + 11 + 13}
