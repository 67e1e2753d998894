"""compare_ablation_addition: every row against a separate engine.run of its interventions, the
mean-difference direction against the captures, coefficient 0 exactly inert."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import COLUMNS, AnalysisError, compare_ablation_addition
from circuitsteer.metrics import logit_diff


@pytest.fixture(scope="module")
def setup():
    model = strong_gpt2(seed=1)
    return model, cs.tasks.ioi(model, n=12, seed=2)


def _ld(model, task, ivs) -> float:
    logits, _ = cs.engine.run(model, task, ivs)
    return float(logit_diff(logits, task).double().mean())


def _displacement(model, task, node, end_only: bool) -> torch.Tensor:
    """corrupted - clean at END (mean over examples) or over every real token (pooled)."""
    _, a = cs.engine.run(model, task, capture=[node])
    _, b = cs.engine.run(model, task.corrupted, positions=task.positions, capture=[node])
    d = (b[node] - a[node]).double()
    if end_only:
        return d[torch.arange(len(task)), task.positions["END"]].mean(0)
    return d[task.real_mask()].mean(0)


def test_rows_equal_separate_runs(setup):
    model, task = setup
    df = compare_ablation_addition(model, task, nodes=["a1.h2", "m1"], coefs=[0.0, 2.0],
                                   positions="END", seed=5, progress=False)  # fmt: skip
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    clean = _ld(model, task, [])
    assert (df.clean == clean).all()
    assert df.corrupted.iloc[0] == pytest.approx(
        float(logit_diff(cs.engine.run(model, task.corrupted)[0], task).double().mean()), abs=1e-6
    )
    for node, space in (("a1.h2", "z"), ("m1", "out")):
        site = cs.Site(node, positions="END")
        rows = df[df.node == node].set_index(["operation", "mode", "vector", "coef"], drop=False)
        for mode in ("zero", "mean", "resample"):
            ref = None if mode == "zero" else task.corrupted
            want = _ld(model, task, [cs.Ablate(site, mode=mode, reference=ref)])
            got = df[(df.node == node) & (df["mode"] == mode)].value.item()
            assert got == pytest.approx(want, abs=1e-5), (node, mode)
        d = _displacement(model, task, node, end_only=True).float()
        want = _ld(model, task, [cs.Add(site, d, coef=2.0, space=space)])
        md = df[(df.node == node) & (df.vector == "mean_diff")].set_index("coef")
        assert md.loc[2.0, "value"] == pytest.approx(want, abs=1e-5)
        assert md.loc[2.0, "vector_norm"] == pytest.approx(2 * float(d.norm()), rel=1e-5)
        # the random control has the direction's norm, and is a different direction
        rnd = df[(df.node == node) & (df.vector == "random")].set_index("coef")
        assert rnd.loc[2.0, "vector_norm"] == pytest.approx(md.loc[2.0, "vector_norm"], rel=1e-5)
        assert rnd.loc[2.0, "value"] != md.loc[2.0, "value"]
        # coefficient 0 changes nothing, exactly
        assert md.loc[0.0, "value"] == clean and md.loc[0.0, "effect"] == 0.0
        assert rnd.loc[0.0, "effect"] == 0.0
        # the share of each ablation's effect the addition reproduces
        for mode in ("zero", "mean", "resample"):
            eff = df[(df.node == node) & (df["mode"] == mode)].effect.item()
            assert md.loc[2.0, f"frac_of_{mode}"] == pytest.approx(md.loc[2.0, "effect"] / eff)
        assert -1.0 <= md.loc[2.0, "corr_with_resample"] <= 1.0
        assert len(rows) == 3 + 2 * 2


def test_pooled_direction_for_all_positions_and_interval(setup):
    model, task = setup
    df = compare_ablation_addition(model, task, nodes=["a2.h0"], coefs=[1.0], modes=["resample"],
                                   random=False, progress=False)  # fmt: skip
    d = _displacement(model, task, "a2.h0", end_only=False).float()
    want = _ld(model, task, [cs.Add(cs.Site("a2.h0"), d, coef=1.0, space="z")])
    add = df[df.operation == "add"].iloc[0]
    assert add.value == pytest.approx(want, abs=1e-5)
    assert add.positions == "all" and add.effect_lo <= add.effect <= add.effect_hi
    # the ablation's change per example, against its own bootstrap interval
    abl = df[df.operation == "ablate"].iloc[0]
    assert abl.effect_lo <= abl.effect <= abl.effect_hi and abl.n == len(task)


def test_circuit_positions_vectors_and_metrics(setup):
    model, task = setup
    c = cs.Circuit("c", shape=model.shape)
    c.add_node("a1.h0", positions=["S2"])
    c.add_node("m2")
    c.add_edge("input", "logits")  # input and logits are no nodes to compare
    v = cs.vectors.SteeringVector(torch.randn(model.shape.d_model), site="resid_pre.1")
    df = compare_ablation_addition(model, task, c, vectors={"mine": v}, coefs=[1.0],
                                   metric=["logit_diff", "kl"], progress=False)  # fmt: skip
    pos = df.groupby("node").positions.first().to_dict()
    assert pos == {"a1.h0": "S2", "m2": "all", "resid_pre.1": "all"}
    assert set(df.metric) == {"logit_diff", "kl"}
    mine = df[df.vector == "mine"].set_index("metric")
    want = _ld(model, task, [cs.Add(cs.Site("resid_pre.1"), v.vector, coef=1.0)])
    assert mine.loc["logit_diff", "value"] == pytest.approx(want, abs=1e-5)
    assert pd.isna(mine.loc["logit_diff", "frac_of_zero"])  # no ablation of a residual site
    kl = df[(df.metric == "kl") & (df.operation == "ablate")]
    assert (kl.clean == 0).all() and (kl.value > 0).all()


def test_errors(setup):
    model, task = setup
    with pytest.raises(AnalysisError, match="ablation modes"):
        compare_ablation_addition(model, task, nodes=["a0.h0"], modes=["shuffle"])
    with pytest.raises(AnalysisError, match="not a head or an MLP"):
        compare_ablation_addition(model, task, nodes=["resid_pre.1"])
    with pytest.raises(AnalysisError, match="not a SteeringVector"):
        compare_ablation_addition(model, task, nodes=[], vectors={"x": torch.ones(3)})
    with pytest.raises(AnalysisError, match="no position"):
        compare_ablation_addition(model, task, nodes=["a0.h0"], positions="NOPE")
