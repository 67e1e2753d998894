"""Direct logit attribution: rows sum to the model's logit difference, and each row equals a hand
computation from the independent forward in gpt2_reference.py."""

from __future__ import annotations

import gpt2_reference as ref
import pytest
import torch
import torch.nn.functional as F
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import AnalysisError, direct_logit_attribution


@pytest.fixture(scope="module")
def model():
    return strong_gpt2(seed=2)


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.ioi(model, n=10, seed=1)


def test_rows_sum_to_the_logit_difference(model, task):
    df = direct_logit_attribution(model, task)
    logits, _ = cs.engine.run(model, task)
    ld = cs.metrics.logit_diff(logits, task).mean().item()
    assert df["dla"].sum() == pytest.approx(ld, abs=1e-4)
    assert df.attrs["logit_diff"] == pytest.approx(ld, abs=1e-6)
    assert df["frac_of_logit_diff"].sum() == pytest.approx(1.0, abs=1e-4)
    assert len(df) == 3 * 4 + 3 + 3  # heads, MLPs, input / bias / ln_final
    assert list(df.columns) == [
        "node",
        "kind",
        "layer",
        "head",
        "dla",
        "dla_std",
        "frac_of_logit_diff",
    ]


def test_rows_sum_per_example(model, task):
    """Each single example's rows sum to that example's logit difference (not only the mean)."""
    logits, _ = cs.engine.run(model, task)
    ld = cs.metrics.logit_diff(logits, task)
    for i in (0, 3, 7):
        one = task.subset([i])
        assert direct_logit_attribution(model, one)["dla"].sum() == pytest.approx(
            float(ld[i]), abs=1e-4
        )


@torch.no_grad()
def test_each_row_equals_a_hand_computation(model, task):
    rec: dict = {}
    ref.forward(model, task.clean, record=rec)
    hf = model.hf
    r, end = torch.arange(len(task)), task.positions["END"]
    x = rec[("logits_in", -1)][r, end]
    ln = hf.transformer.ln_f
    sigma = torch.sqrt(x.var(-1, unbiased=False) + ln.eps)
    w_u = hf.lm_head.weight
    u = w_u[task.correct] - w_u[task.incorrect]

    def dla(c):  # the final LayerNorm with its scale frozen, applied to one part on its own
        c = c.expand_as(x)
        return ((c - c.mean(-1, keepdim=True)) / sigma[:, None] * ln.weight * u).sum(-1).mean()

    want = {
        f"a{L}.h{h}": dla(rec[("head_resid", L, h)][r, end]) for L in range(3) for h in range(4)
    }
    want |= {f"m{L}": dla(rec[("mlp_out", L)][r, end]) for L in range(3)}
    want["input"] = dla(rec[("resid_pre", 0)][r, end])
    want["bias"] = dla(sum(blk.attn.c_proj.bias for blk in hf.transformer.h))
    want["ln_final"] = (u @ ln.bias).mean()
    df = direct_logit_attribution(model, task, batch=3)
    got = dict(zip(df.node, df.dla, strict=True))
    for name, v in want.items():
        assert got[name] == pytest.approx(float(v), abs=1e-5), name
    # and the parts rebuild the real logits through the real (unfrozen) LayerNorm
    total = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps) @ w_u.T
    ld = (total[r, task.correct] - total[r, task.incorrect]).mean()
    assert sum(want.values()) == pytest.approx(float(ld), abs=1e-4)


def test_chunking_and_node_selection(model, task):
    full = direct_logit_attribution(model, task)
    some = direct_logit_attribution(model, task, nodes=["m2", "a1.h3", "bias"], batch=4)
    assert list(some.node) == ["m2", "a1.h3", "bias"]
    for row in some.itertuples():
        assert row.dla == pytest.approx(full[full.node == row.node].dla.item(), abs=1e-6)
        assert row.dla_std == pytest.approx(full[full.node == row.node].dla_std.item(), abs=1e-5)
    row = full[full.node == "a1.h3"].iloc[0]
    assert (row["kind"], row["layer"], row["head"]) == ("head", 1, 3)
    assert full[full.node == "input"].layer.isna().all()


def test_errors(model, task):
    with pytest.raises(AnalysisError, match="no DLA row"):
        direct_logit_attribution(model, task, nodes=["a9.h0"])
    with pytest.raises(AnalysisError, match="no DLA row"):
        direct_logit_attribution(model, task, nodes=[])
    with pytest.raises(AnalysisError, match="batch"):
        direct_logit_attribution(model, task, batch=0)
