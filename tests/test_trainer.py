"""FNLTrainer end to end on a tiny patched BERT: each optimizer, resume, diagnostics, 2 processes."""

from __future__ import annotations

import json
import os

import pytest
import torch

import hf_fnl
from hf_fnl.optim import FDAdamW, Flambe, Lamb
from hf_fnl.trainer import nvidia_poly_schedule

from .launch import launcher, run
from .train_tiny import logged_losses, make_trainer

OPTIMIZERS = {"flambe": Flambe, "lamb": Lamb, "adamw_fd": FDAdamW, "sgd_fd": torch.optim.SGD}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_loss_falls_with_each_optimizer(tmp_path, name):
    lr = {"sgd_fd": 0.5, "adamw_fd": 1e-2}.get(name, 5e-2)
    trainer = make_trainer(str(tmp_path), name, max_steps=16, lr=lr)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(optimizer) is OPTIMIZERS[name]
    losses = logged_losses(trainer)
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert {"fnl/ov/frobenius", "fnl/ov/nuclear", "fnl/qk/frobenius", "fnl/qk/nuclear", "fnl/fd_penalty"} <= set(logs[-1])
    if name in ("flambe", "lamb"):
        assert logs[-1]["fnl/trust_ratio"] > 0
    assert (tmp_path / "fnl_diagnostics.png").stat().st_size > 1000


def test_groups_built_by_the_trainer(tmp_path):
    trainer = make_trainer(str(tmp_path), "flambe", fd_targets=["qk", "ov"], fd_coef=0.05)
    trainer.create_optimizer()
    fd_group = trainer.optimizer.param_groups[0]
    assert fd_group["fd_coef"] == 0.05 and len(fd_group["fd_pairs"]) == 4  # 2 layers × (QK, OV)
    lamb = make_trainer(str(tmp_path), "lamb")
    lamb.create_optimizer()
    assert all(not g["fd_pairs"] for g in lamb.optimizer.param_groups)


def test_coupled_fd_adds_the_penalty_once_per_optimizer_step(tmp_path):
    trainer = make_trainer(str(tmp_path), "sgd_fd", fd_coef=0.1, lr=0.0)
    trainer.create_optimizer()
    model = trainer.model.train()
    batch = torch.utils.data.default_collate([trainer.train_dataset[i] for i in range(4)])
    plain = model(**batch).loss
    with_fd = trainer.compute_loss(model, batch)
    penalty = 0.1 * hf_fnl.fd_penalty(hf_fnl.fnl_factor_pairs(model, ("ov",)))
    assert with_fd.item() == pytest.approx((plain + penalty).item(), rel=1e-6)


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = make_trainer(str(tmp_path / "full"), "flambe", **kw)
    full.train()
    resumed = make_trainer(str(tmp_path / "resumed"), "flambe", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nvidia_poly_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = nvidia_poly_schedule(opt, num_warmup_steps=10, num_training_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.9**0.5) and lrs[75] == pytest.approx(0.25**0.5)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fnl_optim must be one of"):
        hf_fnl.FNLTrainingArguments(output_dir=str(tmp_path), fnl_optim="adam")
    with pytest.raises(ValueError, match="sgd_fd applies FD through the loss"):
        hf_fnl.FNLTrainingArguments(output_dir=str(tmp_path), fnl_optim="sgd_fd", fd_mode="decoupled")
    with pytest.raises(ValueError, match="fd_targets"):
        hf_fnl.FNLTrainingArguments(output_dir=str(tmp_path), fd_targets=["kv"])


def test_unpatched_model_with_flambe_is_refused(tmp_path):
    import transformers as tf

    model = tf.BertForMaskedLM(tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=4, intermediate_size=64))
    trainer = make_trainer(str(tmp_path), "flambe", model=model)
    with pytest.raises(ValueError, match="found no factor pairs.*fnl_patch"):
        trainer.create_optimizer()


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """Two CPU processes (torchrun under accelerate, gloo), per-device batch 4, vs one with batch 8."""
    script = os.path.join(os.path.dirname(__file__), "train_tiny.py")
    runs = {}
    for procs, batch in ((2, 4), (1, 8)):
        out = tmp_path / f"p{procs}" / "losses.json"
        out.parent.mkdir()
        run([script, "--out", str(out), "--batch", str(batch), "--steps", "6"], launcher(procs))
        runs[procs] = json.loads(out.read_text())
    assert len(runs[1]) == len(runs[2]) == 6
    assert runs[2] == pytest.approx(runs[1], rel=1e-4)


def test_rank_adaptive_kls_training_through_the_trainer(tmp_path):
    from hf_fnl.dlrt import DLRTLinear, fnl_dlrt_layers

    from .train_tiny import tiny_model

    model = tiny_model()
    names = fnl_dlrt_layers(model, r".*(intermediate|output)[.]dense", rank=8)
    assert len(names) == 4 and isinstance(model.bert.encoder.layer[0].intermediate.dense, DLRTLinear)
    trainer = make_trainer(str(tmp_path), "kls", max_steps=16, lr=0.5, model=model, dlrt_theta=0.3)
    trainer.train()
    losses = logged_losses(trainer)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    history = trainer._kls.rank_history
    assert len(history) == 16 and all(set(h) == set(names) for h in history)
    assert len({r for h in history for r in h.values()}) > 1  # the ranks moved
    assert "fnl/dlrt_mean_rank" in trainer.state.log_history[-2]

    # the adapted ranks, frozen into FactorizedLinear layers, save, reload and merge exactly
    model.eval()
    x = torch.randint(3, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=x).logits
    ranks = hf_fnl.fnl_dlrt_to_factorized(model)
    assert ranks == history[-1]
    model.save_pretrained(tmp_path / "adapted")
    reloaded = hf_fnl.from_pretrained(str(tmp_path / "adapted")).eval()
    merged = hf_fnl.fnl_merge(reloaded)
    with torch.no_grad():
        for m in (model, reloaded, merged):
            assert (m(input_ids=x).logits - expected).abs().max() <= 1e-5
    assert {n: e["rank"] for n, e in reloaded.config.fnl["layers"].items()} == ranks
    assert not any(isinstance(m, DLRTLinear) for m in reloaded.modules())

    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        hf_fnl.FNLTrainingArguments(output_dir=str(tmp_path), fnl_optim="kls", gradient_accumulation_steps=2)
