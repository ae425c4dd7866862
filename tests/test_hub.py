"""Save/load roundtrip on every architecture, merge, model card and push (fake Hub), CLI, plain
transformers failing loudly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import transformers as tf

import hf_fnl
from hf_fnl.patch import PATCH_ATTR

from .tiny_models import ARCH_IDS, TINY_ARCHS, build, inputs, reduced_rank, tiny_arch

TASK_CLASS = {"encoder": "AutoModelForMaskedLM", "decoder": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
              "vision": "AutoModelForImageClassification"}


def outputs(model, x):
    with torch.no_grad():
        out = model(**x, output_hidden_states=True)
    return [t for k in ("logits", "last_hidden_state") if out.get(k) is not None for t in (out[k],)]


@pytest.mark.parametrize("arch", TINY_ARCHS, ids=ARCH_IDS)
def test_roundtrip_is_exact_and_redoes_no_svd(arch, tmp_path, monkeypatch):
    model = hf_fnl.fnl_patch(build(arch, TASK_CLASS[arch.kind]), rank=reduced_rank(arch), progress=False)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()

    def no_svd(*a, **k):
        raise AssertionError("loading must not factorize anything")

    monkeypatch.setattr(hf_fnl.factorize, "product_svd", no_svd)
    loaded = hf_fnl.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(loaded) is type(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = inputs(arch)
    for o1, o2 in zip(outputs(model, x), outputs(loaded, x)):
        assert torch.equal(o1, o2)
    assert hf_fnl.fnl_summary(loaded).rows == hf_fnl.fnl_summary(model).rows
    assert len(hf_fnl.fnl_factor_pairs(loaded)) == len(hf_fnl.fnl_factor_pairs(model))


def test_auto_classes_after_import_and_task_checkpoint_into_base_model(tmp_path):
    arch = tiny_arch("bert")
    model = hf_fnl.fnl_patch(build(arch, "AutoModelForMaskedLM"), rank=0.5, progress=False)
    model.save_pretrained(tmp_path)
    mlm = tf.AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(mlm.bert.encoder.layer[1].attention.self.query.weight,
                       model.bert.encoder.layer[1].attention.self.query.weight)
    base = tf.AutoModel.from_pretrained(tmp_path)  # "bert." prefix dropped by transformers, and by the hook
    assert torch.equal(base.encoder.layer[0].attention.output.dense.weight,
                       model.bert.encoder.layer[0].attention.output.dense.weight)
    # tied embeddings stay tied
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()


def test_sharded_and_bf16_checkpoints(tmp_path):
    arch = tiny_arch("gpt2")
    model = hf_fnl.fnl_patch(build(arch, "AutoModelForCausalLM", dtype=torch.bfloat16), rank=0.5, progress=False)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    loaded = hf_fnl.from_pretrained(str(tmp_path))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _run_plain_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter where hf_fnl cannot be imported."""
    guard = "import sys, importlib.abc\n" \
            "class Block(importlib.abc.MetaPathFinder):\n" \
            "    def find_spec(self, name, *a):\n" \
            "        if name == 'hf_fnl' or name.startswith('hf_fnl.'): raise ImportError('hf_fnl blocked')\n" \
            "sys.meta_path.insert(0, Block())\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, env=env, timeout=300,
                          cwd="/")


def test_plain_transformers_fails_loudly_on_a_patched_checkpoint(tmp_path):
    arch = tiny_arch("bert")
    hf_fnl.fnl_patch(build(arch, "AutoModelForMaskedLM"), rank=0.5, progress=False).save_pretrained(tmp_path)
    result = _run_plain_python(f"import transformers; transformers.AutoModelForMaskedLM.from_pretrained({str(tmp_path)!r})")
    assert result.returncode != 0
    assert "mismatch" in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("scaling", ["original", "rescale"])
@pytest.mark.parametrize("model_type", ["bert", "bart", "gpt2", "t5", "qwen2"])
def test_merge_gives_the_vanilla_architecture_with_the_same_outputs(model_type, scaling, tmp_path):
    arch = tiny_arch(model_type)
    patched = hf_fnl.fnl_patch(build(arch, TASK_CLASS[arch.kind]), rank=reduced_rank(arch), scaling=scaling, progress=False)
    dense = hf_fnl.fnl_merge(patched)
    assert hf_fnl.is_fnl_patched(patched) and not hf_fnl.is_fnl_patched(dense)
    x = inputs(arch)
    for o1, o2 in zip(outputs(patched, x), outputs(dense, x)):
        assert (o1 - o2).abs().max() <= 1e-5
    vanilla = build(arch, TASK_CLASS[arch.kind])
    assert {k: v.shape for k, v in vanilla.state_dict().items()} == {k: v.shape for k, v in dense.state_dict().items()}
    assert not any(hasattr(m, PATCH_ATTR) for m in dense.modules())
    dense.save_pretrained(tmp_path)
    code = (f"import torch, transformers; m = transformers.{TASK_CLASS[arch.kind]}.from_pretrained({str(tmp_path)!r}); "
            "print(sum(p.numel() for p in m.parameters()))")
    result = _run_plain_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == sum(p.numel() for p in dense.parameters())


class FakeHfApi:
    """Records what would go to the Hub; keeps the uploaded files' contents."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.repos.append((repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        files = {}
        for name in os.listdir(folder_path):
            with open(os.path.join(folder_path, name), "rb") as f:
                files[name] = f.read()
        self.uploads.append((repo_id, commit_message, files))
        return f"https://hub.example/{repo_id}/commit/1"


def test_push_to_hub_uploads_weights_config_and_card():
    arch = tiny_arch("bert")
    model = hf_fnl.fnl_patch(build(arch, "AutoModelForMaskedLM"), rank=0.5, progress=False)
    api = FakeHfApi()
    url = hf_fnl.fnl_push_to_hub(model, "me/bert-fnl-half", api=api, private=True, base_model="bert-tiny",
                                 command="hf-fnl compress bert-tiny --rank 0.5", fd_settings={"optimizer": "flambe"},
                                 eval_results={"squad_f1": 88.9})
    assert url.endswith("/commit/1") and api.repos == [("me/bert-fnl-half", True, True)]
    (repo, _, files), = api.uploads
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    summary = hf_fnl.fnl_summary(model)
    for text in ("base_model: bert-tiny", "hf-fnl", "4/8", f"{summary.model_params_before:,}",
                 f"{summary.model_params_after:,}", "hf-fnl compress bert-tiny --rank 0.5", "| squad_f1 | 88.9 |",
                 "| optimizer | flambe |", "pip install hf-fnl"):
        assert text in card, text


def test_push_offline_raises_huggingface_hub_error_at_once(monkeypatch):
    import time

    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = hf_fnl.fnl_patch(build(TINY_ARCHS[0]), rank=0.5, progress=False)
    start = time.perf_counter()
    with pytest.raises(OfflineModeIsEnabled):
        hf_fnl.fnl_push_to_hub(model, "me/x", token="hf_fake")
    assert time.perf_counter() - start < 30


def test_cli_compress_on_a_local_model(tmp_path):
    arch = tiny_arch("bert")
    build(arch, "AutoModelForMaskedLM").save_pretrained(tmp_path / "plain")
    cli = os.path.join(os.path.dirname(sys.executable), "hf-fnl")
    result = subprocess.run([cli, "compress", str(tmp_path / "plain"), "--rank", "0.5", "--model-class",
                             "AutoModelForMaskedLM", "--out", str(tmp_path / "out"), "--self-contained"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "encoder.layer.1.attention" in result.stdout and "kept" in result.stdout
    assert "fnl_patch" in result.stderr  # the progress bar
    loaded = hf_fnl.from_pretrained(str(tmp_path / "out"))
    assert loaded.bert.encoder.layer[0].attention.self.attention_head_size == 4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "hf-fnl compress" in card and str(tmp_path / "plain") in card
    assert (tmp_path / "out" / "modeling_fnl.py").exists()


def test_pickle_weights_are_refused_unless_opted_in(tmp_path):
    arch = tiny_arch("bert")
    model = hf_fnl.fnl_patch(build(arch), rank=0.5, progress=False)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        hf_fnl.from_pretrained(str(tmp_path), use_safetensors=False)
    os.remove(tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError):
        hf_fnl.from_pretrained(str(tmp_path))
    loaded = hf_fnl.from_pretrained(str(tmp_path), allow_pickle=True)
    assert torch.equal(loaded.encoder.layer[0].attention.self.query.weight, model.encoder.layer[0].attention.self.query.weight)


def test_unpatched_checkpoint_is_refused_by_hf_fnl_loader(tmp_path):
    build(TINY_ARCHS[0]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not saved after"):
        hf_fnl.from_pretrained(str(tmp_path))


def _assert_self_contained_export_loads_without_hf_fnl(model, arch, task, tmp_path):
    export = tmp_path / f"export_{arch.model_type}"  # remote code is cached by folder name: one per model
    hf_fnl.save_self_contained(model, str(export))
    x = inputs(arch)
    torch.save({"inputs": x, "expected": outputs(model, x)[0]}, tmp_path / "check.pt")
    code = (
        "import torch, transformers\n"
        f"m = transformers.{task}.from_pretrained({str(export)!r}, trust_remote_code=True, "
        "attn_implementation='eager').eval()\n"
        f"c = torch.load({str(tmp_path / 'check.pt')!r})\n"
        "out = m(**c['inputs'])\n"
        "got = out.logits\n"
        "print(type(m).__name__, (got - c['expected']).abs().max().item())\n"
    )
    result = _run_plain_python(code, HF_MODULES_CACHE=str(tmp_path / "modules"))
    assert result.returncode == 0, result.stderr[-3000:]
    name, diff = result.stdout.split()[-2:]
    assert name.startswith("FNL") and float(diff) == 0.0


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "t5", "qwen2"])
def test_self_contained_export_loads_without_hf_fnl(model_type, tmp_path):
    arch = tiny_arch(model_type)
    task = TASK_CLASS[arch.kind]
    model = hf_fnl.fnl_patch(build(arch, task), rank=reduced_rank(arch), scaling="rescale", progress=False)
    _assert_self_contained_export_loads_without_hf_fnl(model, arch, task, tmp_path)


@pytest.mark.parametrize("model_type,targets", [("bert", r".*(intermediate|output)\.dense"),
                                                ("vit", r".*(patch_embeddings\.projection|mlp\.fc1)")])
def test_self_contained_export_of_factorized_layers(model_type, targets, tmp_path):
    arch = tiny_arch(model_type)
    task = TASK_CLASS[arch.kind]
    model = hf_fnl.fnl_patch(build(arch, task), rank=0.5, linear_targets=targets, linear_rank=0.5, linear_inner=True,
                             progress=False)
    kinds = {entry["kind"] for entry in model.config.fnl["layers"].values()}
    assert kinds == ({"linear", "conv2d"} if model_type == "vit" else {"linear"})
    _assert_self_contained_export_loads_without_hf_fnl(model, arch, task, tmp_path)


@pytest.mark.parametrize("scaling", ["original", "rescale"])
@pytest.mark.parametrize("model_type", ["t5", "vit"])
def test_export_vanilla_states_the_reduced_head_size(model_type, scaling, tmp_path):
    arch = tiny_arch(model_type)
    patched = hf_fnl.fnl_patch(build(arch, TASK_CLASS[arch.kind]), rank=0.5, scaling=scaling, progress=False)
    vanilla = hf_fnl.export_vanilla(patched)
    field = {"t5": "d_kv", "vit": "head_dim"}[model_type]
    assert getattr(vanilla.config, field) == 4 and not hf_fnl.is_fnl_patched(vanilla)
    assert sum(p.numel() for p in vanilla.parameters()) == sum(p.numel() for p in patched.parameters())
    x = inputs(arch)
    for o1, o2 in zip(outputs(patched, x), outputs(vanilla, x)):
        assert (o1 - o2).abs().max() <= 1e-5
    vanilla.save_pretrained(tmp_path)
    result = _run_plain_python(f"import transformers; m = transformers.{TASK_CLASS[arch.kind]}.from_pretrained("
                               f"{str(tmp_path)!r}); print(m.config.{field})")
    assert result.returncode == 0 and result.stdout.split()[-1] == "4", result.stderr[-2000:]


def test_export_vanilla_refuses_what_a_config_cannot_state():
    bert = hf_fnl.fnl_patch(build(TINY_ARCHS[0]), rank=0.5, progress=False)
    with pytest.raises(ValueError, match="fnl_merge"):
        hf_fnl.export_vanilla(bert)
    t5 = tiny_arch("t5")
    mixed = hf_fnl.fnl_patch(build(t5), rank=0.5, rank_pattern={r"decoder": 2}, progress=False)
    with pytest.raises(ValueError, match="one rank"):
        hf_fnl.export_vanilla(mixed)
