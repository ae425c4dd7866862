import hf_fnl

from .tiny_models import build, tiny_arch


def test_summary_rows_and_totals(capsys):
    model = build(tiny_arch("bert"))
    before = sum(p.numel() for p in model.parameters())
    hf_fnl.fnl_patch(model, rank=0.5, progress=False)
    summary = hf_fnl.fnl_summary(model)
    assert [(r.module, r.form) for r in summary.rows] == [
        ("encoder.layer.0.attention", "qk"), ("encoder.layer.0.attention", "ov"),
        ("encoder.layer.1.attention", "qk"), ("encoder.layer.1.attention", "ov")]
    qk = summary.rows[0]
    assert (qk.rank, qk.head_dim, qk.heads) == (4, 8, 4)
    assert qk.params_before == 2 * (32 * 32 + 32) and qk.params_after == 2 * (16 * 32 + 16)
    ov = summary.rows[1]
    assert ov.params_before == 2 * 32 * 32 + 2 * 32 and ov.params_after == 2 * 16 * 32 + 16 + 32
    assert 0 < qk.si_error < 1
    assert summary.model_params_before == before
    assert summary.model_params_after == sum(p.numel() for p in model.parameters())
    hf_fnl.print_fnl_summary(model)
    text = capsys.readouterr().out
    assert "encoder.layer.1.attention" in text and "4/8" in text and f"{before:,}" in text and "kept" in text
