"""downstream_effects: exact zeros upstream, through == total with the full graph, the
through-circuit part against an edge-restricted intervention, attention and DLA changes
against captures, and the DLA identity over all nodes."""

from __future__ import annotations

import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer.analysis import AnalysisError, downstream_effects
from circuitsteer.analysis.attribution import _final_norm
from circuitsteer.metrics import logit_diff


@pytest.fixture(scope="module")
def setup():
    model = strong_gpt2(seed=3)
    task = cs.tasks.ioi(model, n=10, seed=4)
    return model, task, cs.full_edge_graph(model.shape)


def _changes(df):
    return df[df.metric != "out_cosine"]


@pytest.mark.parametrize(
    "make",
    [
        lambda t: cs.Ablate(cs.Site("a1.h1"), mode="zero"),
        lambda t: cs.Ablate(cs.Site("m1", positions="S2"), mode="resample", reference=t.corrupted),
        lambda t: cs.Add(cs.Site("a1.h3", positions="END"), torch.ones(12), coef=3.0),
        lambda t: cs.Add(cs.Site("resid_pre.2"), torch.linspace(-1, 1, 48), coef=2.0),
        lambda t: cs.Scale(cs.Site("a0.h2", to=("a2.h1<q>", "m2")), 0.0),
    ],
    ids=["zero-head", "resample-mlp", "add-z", "add-resid", "edge-restricted"],
)
def test_full_graph_through_equals_total_and_upstream_is_zero(setup, make):
    model, task, full = setup
    df = downstream_effects(model, task, full, make(task), nodes="all", at=["S2", "END"])
    ch = _changes(df)
    assert float(ch[ch.part == "rest"].value.abs().max()) == 0.0
    assert float(ch[ch.part == "rest"].mean_abs.max()) == 0.0
    up = df[df.relation == "upstream"]
    assert len(up) and float(_changes(up).mean_abs.abs().max()) == 0.0
    assert (up[up.metric == "out_cosine"].value == 1.0).all()
    total = ch[(ch.part == "total") & (ch.relation == "downstream")]
    assert float(total.mean_abs.max()) > 1e-4  # something downstream moved
    tot = df[df.part == "total"].set_index(["node", "metric", "at", "to"], drop=False)
    thr = df[df.part == "through_circuit"].set_index(["node", "metric", "at", "to"], drop=False)
    assert (tot.value.values == thr.value.values).all()


def test_empty_circuit_carries_nothing_past_the_site(setup):
    model, task, _ = setup
    empty = cs.Circuit("empty", shape=model.shape)
    df = downstream_effects(model, task, empty, cs.Ablate(cs.Site("a0.h1"), mode="zero"),
                            nodes="all")  # fmt: skip
    thr = _changes(df[(df.part == "through_circuit") & (df.relation == "downstream")])
    assert float(thr.mean_abs.max()) < 1e-4  # every edge reads the clean output
    site = df[(df.node == "a0.h1") & (df.metric == "out_delta_norm")].set_index("part")
    assert site.loc["through_circuit", "value"] == site.loc["total", "value"] > 0


def test_through_one_edge_equals_the_edge_restricted_run(setup):
    model, task, _ = setup
    c = cs.Circuit("one", shape=model.shape)
    c.add_edge("a0.h1", "a1.h0", "q")
    iv = cs.Ablate(cs.Site("a0.h1"), mode="zero")
    df = downstream_effects(model, task, c, iv, nodes=["a1.h0", "a2.h2"])
    r, end = torch.arange(len(task)), task.positions["END"]
    _, clean = cs.engine.run(model, task, capture=["a1.h0:result", "a1.h0:pattern"])
    edge = cs.Ablate(cs.Site("a0.h1", to=("a1.h0<q>",)), mode="zero")
    _, only = cs.engine.run(model, task, [edge], capture=["a1.h0:result", "a1.h0:pattern"])
    d = (only["a1.h0:result"] - clean["a1.h0:result"])[r, end].double()
    thr = df[(df.node == "a1.h0") & (df.part == "through_circuit")].set_index(["metric", "to"])
    assert thr.loc[("out_delta_norm", None), "value"] == pytest.approx(float(d.norm(dim=-1).mean()), rel=1e-4, abs=1e-6)  # fmt: skip
    for to, k in task.positions.items():
        p = (only["a1.h0:pattern"] - clean["a1.h0:pattern"])[r, end, k].double().mean()
        assert thr.loc[("attn_delta", to), "value"] == pytest.approx(float(p), abs=1e-5)
    # a2.h2 reads a0.h1 and a1.h0 only through edges outside the circuit
    far = df[
        (df.node == "a2.h2") & (df.part == "through_circuit") & (df.metric == "out_delta_norm")
    ]
    assert float(far.value.item()) < 1e-5


def test_attention_and_dla_against_captures(setup):
    model, task, full = setup
    iv = cs.Ablate(cs.Site("a0.h3"), mode="mean", reference=task.corrupted)
    df = downstream_effects(model, task, None, iv, nodes="all")
    assert set(df.part) == {"total"}
    caps = ["logits:in", *(f"{h}:result" for h in cs.nodes.all_heads(model.shape))]
    caps += [*cs.nodes.all_mlps(model.shape), "a2.h0:pattern"]
    l0, c0 = cs.engine.run(model, task, capture=caps)
    l1, c1 = cs.engine.run(model, task, [iv], capture=caps)
    r, end = torch.arange(len(task)), task.positions["END"]
    tot = df.set_index(["node", "metric", "to"])
    p = (c1["a2.h0:pattern"] - c0["a2.h0:pattern"])[r, end, task.positions["S1"]]
    assert tot.loc[("a2.h0", "attn_delta", "S1"), "value"] == pytest.approx(float(p.double().mean()), abs=1e-6)  # fmt: skip
    # with the final norm's scale frozen at the clean run, the nodes' DLA changes add up to the
    # direct effect of the final residual's change (embeddings and biases do not move)
    ln, _, eps = _final_norm(model)
    x0, x1 = c0["logits:in"][r, end].double(), c1["logits:in"][r, end].double()
    scale = ((x0 - x0.mean(-1, keepdim=True)).pow(2).mean(-1) + eps).sqrt()[:, None]
    w = model.hf.get_output_embeddings().weight.detach().double()
    u = (w[task.correct] - w[task.incorrect]) * ln.weight.detach().double()
    dx = x1 - x0
    want = ((dx - dx.mean(-1, keepdim=True)) / scale * u).sum(-1).mean()
    got = df[(df.metric == "dla_delta") & (df.part == "total")].value.sum()
    assert got == pytest.approx(float(want), abs=1e-5)
    ld = tot.loc[("logits", "logit_diff", None), "value"]
    assert ld == pytest.approx(float((logit_diff(l1, task) - logit_diff(l0, task)).double().mean()), abs=1e-6)  # fmt: skip


def test_empty_intervention_list_changes_nothing(setup):
    model, task, full = setup
    df = downstream_effects(model, task, full, [], nodes="all", at=["S2", "END"])
    ch = _changes(df)
    assert float(ch.mean_abs.max()) == 0.0 and (df[df.metric == "out_cosine"].value == 1.0).all()
    assert (df.operation == "none").all() and (df[df.node != "logits"].relation == "upstream").all()


def test_errors(setup):
    model, task, full = setup
    iv = cs.Ablate(cs.Site("a0.h1"), mode="zero")
    with pytest.raises(AnalysisError, match="no position"):
        downstream_effects(model, task, full, iv, at="NOPE")
    with pytest.raises(AnalysisError, match="not a head or an MLP"):
        downstream_effects(model, task, full, iv, nodes=["resid_pre.1"])
