"""faithfulness, completeness, minimality and the MIB curve: the full circuit is exactly the
model, the empty circuit exactly the ablated baseline, node- and edge-level runs against
separate engine runs and identities between the two levels."""

from __future__ import annotations

import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer import edge_graph as eg
from circuitsteer.analysis import (
    AnalysisError,
    area_under_curve,
    completeness,
    faithfulness,
    faithfulness_curve,
    minimality,
)
from circuitsteer.metrics import logit_diff
from circuitsteer.nodes import all_heads, all_mlps


@pytest.fixture(scope="module")
def setup():
    model = strong_gpt2(seed=7, n_layers=2)
    return model, cs.tasks.ioi(model, n=10, seed=3)


def _ld(model, task, ivs=()) -> float:
    return float(logit_diff(cs.engine.run(model, task, list(ivs))[0], task).double().mean())


def _ablate(nodes, mode, task, positions="all"):
    ref = None if mode == "zero" else task.corrupted
    return [cs.Ablate(cs.Site(n, positions=positions), mode=mode, reference=ref) for n in nodes]


def _circuit(model, nodes=(), edges=()):
    c = cs.Circuit("c", shape=model.shape)
    for n in nodes:
        c.add_node(n)
    for e in edges:
        c.add_edge(*e)
    return c


@pytest.mark.parametrize("level", ["node", "edge"])
@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_full_circuit_is_the_model_and_empty_is_the_baseline(setup, level, mode):
    model, task = setup
    full = cs.full_edge_graph(model.shape)
    df = faithfulness(model, task, full, ablation=mode, level=level, progress=False)
    row = df.iloc[0]
    assert row.value == 1.0 and row.circuit_value == row.model_value == _ld(model, task)
    assert (row["mode"], row.level, row.positions) == (mode, level, "all")
    empty = faithfulness(model, task, _circuit(model), ablation=mode, level=level).iloc[0]
    assert empty.circuit_value == empty.ablated_value and empty.normalized == 0.0
    if level == "node":  # every head and MLP ablated, by hand
        nodes = all_heads(model.shape) + all_mlps(model.shape)
        assert empty.circuit_value == pytest.approx(_ld(model, task, _ablate(nodes, mode, task)), abs=1e-5)  # fmt: skip
    elif mode == "resample":  # every edge patched: the corrupted run
        want = float(logit_diff(cs.engine.run(model, task.corrupted)[0], task).double().mean())
        assert empty.circuit_value == pytest.approx(want, abs=1e-4)


def test_node_level_circuit_against_separate_runs(setup):
    model, task = setup
    keep = {"a0.h1", "a1.h2", "m0"}
    c = _circuit(model, keep)
    others = [n for n in all_heads(model.shape) + all_mlps(model.shape) if n not in keep]
    df = faithfulness(model, task, c, ablation="mean", positions="END", progress=False)
    r = df.iloc[0]
    want = _ld(model, task, _ablate(others, "mean", task, positions="END"))
    assert r.circuit_value == pytest.approx(want, abs=1e-5)
    assert r.value == pytest.approx(want / _ld(model, task), rel=1e-6)
    assert r.value_lo <= r.value <= r.value_hi and r.positions == "END" and r.n_kept == 3


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_edge_level_ablation_of_one_senders_edges_is_its_node_ablation(setup, mode):
    """Every edge kept except those leaving a1.h0: each reader sees the ablated value of a1.h0's
    output only, as when the node itself is ablated (a head's output is linear in its z)."""
    model, task = setup
    edges = [e for e in eg.full_edges(model.shape) if e[0] != "a1.h0"]
    c = _circuit(model, edges=edges)
    got = faithfulness(model, task, c, ablation=mode, level="edge").circuit_value.item()
    assert got == pytest.approx(_ld(model, task, _ablate(["a1.h0"], mode, task)), abs=1e-4)


def test_completeness_and_minimality(setup):
    model, task = setup
    keep = ["a0.h0", "a0.h3", "a1.h1", "m1"]
    c = _circuit(model, keep)
    for n, cls in zip(keep, ["x", "x", "y", "y"], strict=True):
        c.add_node(n, cls=cls)
    everything = all_heads(model.shape) + all_mlps(model.shape)
    out = [n for n in everything if n not in keep]
    df = completeness(model, task, c, ablation="resample", progress=False).set_index("subset")
    assert set(df.index) == {"empty", "circuit", "x", "y"}
    f_c, f_m = _ld(model, task, _ablate(out, "resample", task)), _ld(model, task)
    assert df.loc["empty", "value"] == pytest.approx(abs(f_c - f_m), abs=1e-5)
    c_minus = _ld(model, task, _ablate([*out, "a0.h0", "a0.h3"], "resample", task))
    m_minus = _ld(model, task, _ablate(["a0.h0", "a0.h3"], "resample", task))
    assert (df.loc["x", "circuit_minus_k"], df.loc["x", "model_minus_k"]) == (
        pytest.approx(c_minus, abs=1e-5), pytest.approx(m_minus, abs=1e-5))  # fmt: skip
    full = completeness(model, task, cs.full_edge_graph(model.shape), subsets="nodes")
    assert (full.value == 0).all()
    mini = minimality(model, task, c, k_sets={"a1.h1": ["m1"]}, ablation="resample")
    mini = mini.set_index("node")
    without = _ld(model, task, _ablate([*out, "a0.h3"], "resample", task))
    assert mini.loc["a0.h3", "value"] == pytest.approx(abs(without - f_c), abs=1e-5)
    k_only = _ld(model, task, _ablate([*out, "m1"], "resample", task))
    both = _ld(model, task, _ablate([*out, "m1", "a1.h1"], "resample", task))
    assert mini.loc["a1.h1", "value"] == pytest.approx(abs(both - k_only), abs=1e-5)
    assert mini.loc["a1.h1", "removed"] == "m1"
    with pytest.raises(AnalysisError, match="outside the circuit"):
        minimality(model, task, c, k_sets={"a1.h1": ["a0.h2"]})


def test_faithfulness_curve(setup):
    model, task = setup
    edges = list(eg.full_edges(model.shape))
    g = torch.Generator().manual_seed(0)
    scores = dict(zip(edges, torch.randn(len(edges), generator=g).tolist(), strict=True))
    fr = [0.1, 0.5, 1.0]
    df = faithfulness_curve(model, task, scores, fractions=fr, prune=False, progress=False)
    curve = df[df.metric == "faithfulness"]
    assert curve.value.iloc[-1] == 1.0 and list(curve.n_kept) == [int(f * len(edges)) for f in fr]
    # the 10% circuit is the top |score| edges, run by hand through the dense mask
    top = sorted(edges, key=lambda e: -abs(scores[e]))[: int(0.1 * len(edges))]
    got = faithfulness(model, task, _circuit(model, edges=top), ablation="resample", level="edge")
    m, e = df.attrs["model_value"], df.attrs["ablated_value"]
    assert curve.value.iloc[0] == pytest.approx((got.circuit_value.item() - e) / (m - e))
    cpr, cmd = area_under_curve(fr, curve.value.tolist())
    assert df.attrs["cpr"] == cpr == df[df.metric == "cpr"].value.item()
    assert df.attrs["cmd"] == cmd == df[df.metric == "cmd"].value.item()
    # pruning keeps only edges on an input -> logits path; signed ranking differs from |score|
    pruned = faithfulness_curve(model, task, scores, fractions=fr, progress=False)
    assert (pruned[pruned.metric == "faithfulness"].n_kept.values <= curve.n_kept.values).all()
    # node level: scores from a mapping over heads and MLPs
    nodes = all_heads(model.shape) + all_mlps(model.shape)
    ns = {n: float(i) for i, n in enumerate(nodes)}
    nd = faithfulness_curve(model, task, ns, fractions=[0.5, 1.0], level="node", ablation="zero")
    keep = nodes[len(nodes) - len(nodes) // 2 :]  # the highest scores
    want = _ld(model, task, _ablate([n for n in nodes if n not in keep], "zero", task))
    assert nd[nd.metric == "faithfulness"].circuit_value.iloc[0] == pytest.approx(want, abs=1e-5)


def test_area_under_curve_by_hand_and_errors(setup):
    assert area_under_curve([0.0, 1.0], [1.0, 1.0]) == (1.0, 0.0)
    cpr, cmd = area_under_curve([0.1, 0.2, 1.0], [0.5, 1.5, 1.0])
    assert cpr == pytest.approx(0.1 * 1.0 + 0.8 * 1.25) and cmd == pytest.approx(0.1 * 0.5 + 0.8 * 0.25)  # fmt: skip
    model, task = setup
    with pytest.raises(AnalysisError, match="edge-level"):
        faithfulness(model, task, _circuit(model), level="edge", positions="END")
    with pytest.raises(AnalysisError, match="unknown ablation"):
        faithfulness(model, task, _circuit(model), ablation="shuffle")
    with pytest.raises(AnalysisError, match="no edge scores"):
        faithfulness_curve(model, task, _circuit(model))
