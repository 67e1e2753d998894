"""coefficient_sweep: metrics per coefficient against separate runs, diagnostics against the
captures and the norm modules, the break point."""

from __future__ import annotations

import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer import metrics
from circuitsteer.analysis import AnalysisError, break_point, coefficient_sweep


@pytest.fixture(scope="module")
def sweep():
    model = strong_gpt2(seed=5)
    task = cs.tasks.ioi(model, n=8, seed=1)
    neutral = cs.tasks.neutral(model, n=6, seed=2)
    g = torch.Generator().manual_seed(0)
    v = cs.vectors.SteeringVector(torch.randn(48, generator=g), site="resid_pre.1")
    df = coefficient_sweep(model, v, coefs=[-4.0, 1.0, 4.0, 64.0], task=task, neutral=neutral,
                           kl_threshold=0.5, n_diag=4, progress=False)  # fmt: skip
    return model, task, neutral, v, df


def _coef(df, data, metric):
    return df[(df.level == "coef") & (df.data == data) & (df.metric == metric)].set_index("coef")


def test_metrics_per_coefficient_equal_separate_runs(sweep):
    model, task, neutral, v, df = sweep
    ld = _coef(df, "task", "logit_diff")
    assert list(ld.index) == [0.0, 1.0, -4.0, 4.0, 64.0]  # 0 added, ordered by |c|
    clean, _ = cs.engine.run(model, task)
    assert ld.loc[0.0, "value"] == float(metrics.logit_diff(clean, task).double().mean())
    assert ld.loc[0.0, "effect"] == 0.0 and _coef(df, "task", "kl").loc[0.0, "value"] == 0.0
    n_clean, _ = cs.engine.run(model, neutral)
    for c in (1.0, 64.0):
        lg, _ = cs.engine.run(model, task, [cs.Add(cs.Site("resid_pre.1"), v.vector, coef=c)])
        want = metrics.logit_diff(lg, task).double().mean()
        assert ld.loc[c, "value"] == pytest.approx(float(want), abs=1e-5)
        kl = metrics.kl_at_end(clean, lg, task).double().mean()
        assert _coef(df, "task", "kl").loc[c, "value"] == pytest.approx(float(kl), abs=1e-5)
        nl, _ = cs.engine.run(model, neutral, [cs.Add(cs.Site("resid_pre.1"), v.vector, coef=c)])
        nkl = metrics.kl_div(n_clean, nl, neutral.real_mask()).double().mean()
        assert _coef(df, "neutral", "kl").loc[c, "value"] == pytest.approx(float(nkl), abs=1e-5)
        loss = metrics.loss(nl, neutral.clean, neutral.lengths).double().mean()
        assert _coef(df, "neutral", "loss").loc[c, "value"] == pytest.approx(float(loss), abs=1e-5)
        top = metrics.top_token_change(n_clean, nl, neutral.real_mask()).double().mean()
        assert _coef(df, "neutral", "top_token_change").loc[c, "value"] == pytest.approx(float(top))  # fmt: skip
    assert _coef(df, "neutral", "kl").loc[0.0, "value"] == 0.0


def test_diagnostics_against_captures(sweep):
    model, task, neutral, v, df = sweep
    n = 4
    toks, real = neutral.clean[:n], neutral.real_mask()[:n]
    caps = ["resid_pre.1", "resid_pre.2"]
    _, c0 = cs.engine.run(model, toks, capture=caps)
    _, c4 = cs.engine.run(model, toks, [cs.Add(cs.Site("resid_pre.1"), v.vector, coef=4.0)],
                          capture=caps)  # fmt: skip
    lay = df[(df.level == "layer") & (df.coef == 4.0)].set_index(["metric", "layer"])
    pos = df[(df.level == "layer_pos") & (df.coef == 4.0)].set_index(
        ["metric", "layer", "position"]
    )
    x0 = c0["resid_pre.1"].double().norm(dim=-1)
    want = (4.0 * float(v.vector.double().norm()) / x0)[real].mean()
    assert lay.loc[("vec_ratio", 1), "value"] == pytest.approx(float(want), rel=1e-5)
    # layers below the site see nothing; the site's layer grows by the added vector
    assert lay.loc[("resid_norm_ratio", 0), "value"] == 1.0
    ratio = c4["resid_pre.2"].double().norm(dim=-1) / c0["resid_pre.2"].double().norm(dim=-1)
    assert lay.loc[("resid_norm_ratio", 2), "value"] == pytest.approx(float(ratio[real].mean()), rel=1e-5)  # fmt: skip
    # the norm's divisor, read off the LayerNorm module itself: ln(x) = (x - mu) / scale * w + b
    ln = model.hf.transformer.h[2].ln_1
    x = c4["resid_pre.2"][:, 3].double()  # position 3 is real in every row
    with torch.no_grad():
        y = ln(c4["resid_pre.2"][:, 3]).double()
    w, b = ln.weight.detach().double(), ln.bias.detach().double()
    scale = ((x - x.mean(-1, keepdim=True)) * w / (y - b)).median(-1).values.mean()
    assert pos.loc[("norm_scale", 2, 3), "value"] == pytest.approx(float(scale), rel=1e-3)
    # attention entropy and BOS mass of layer 2 at query position 5, averaged over its heads
    _, all_p = cs.engine.run(model, toks, [cs.Add(cs.Site("resid_pre.1"), v.vector, coef=4.0)],
                             capture=[f"a2.h{h}:pattern" for h in range(4)])  # fmt: skip
    stack = torch.stack([all_p[f"a2.h{h}:pattern"] for h in range(4)], 1).double()[:, :, 5]
    rows = real[:, 5]
    ent = -(stack * stack.clamp_min(1e-30).log()).sum(-1).mean(1)[rows].mean()
    assert pos.loc[("attn_entropy", 2, 5), "value"] == pytest.approx(float(ent), rel=1e-6)
    assert pos.loc[("attn_bos", 2, 5), "value"] == pytest.approx(float(stack[..., 0].mean(1)[rows].mean()), rel=1e-6)  # fmt: skip


def test_break_point(sweep):
    *_, df = sweep
    kl = _coef(df, "neutral", "kl").value
    bp = break_point(df)
    pos_break = min(c for c in kl.index if c > 0 and kl[c] >= 0.5)
    assert set(bp.side) <= {1.0, -1.0} and bp[bp.side == 1.0].coef.iloc[0] == pos_break
    assert df.attrs["break_point"]["coef"] == pos_break
    assert "vec_ratio" in df.attrs["break_point"]["diagnostics"][1]
    assert (df[df.coef == pos_break].broken).all() and not df[df.coef == 0.0].broken.any()
    assert break_point(df, kl_threshold=1e9).empty


def test_errors():
    model = strong_gpt2(seed=0, n_layers=2)
    neutral = cs.tasks.neutral(model, n=2)
    with pytest.raises(AnalysisError, match="site="):
        coefficient_sweep(model, torch.ones(48), coefs=[1.0], neutral=neutral)
    v = cs.vectors.SteeringVector(torch.ones(48), site="resid_pre.1")
    with pytest.raises(AnalysisError, match="no position 'S2'"):
        coefficient_sweep(model, v, coefs=[1.0], neutral=neutral, positions="S2", progress=False)
