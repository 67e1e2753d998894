"""Selection (top-n, threshold, greedy, pruning), circuit files with run metadata, and the
evaluation helpers (ROC AUC, Spearman, faithfulness curves) against brute-force computations."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

import circuitsteer as cs
from circuitsteer import discovery as dc
from circuitsteer.nodes import ModelShape
from circuitsteer.zoo.tokenizer import toy_tokenizer

torch.set_num_threads(1)
SHAPE = ModelShape(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=0, d_vocab=5)


def scores(values, method="demo"):
    meta = {"method": method, "metric": "kl", "ablation": "resample", "positions": "all",
            "data": {"task": "t", "n": 3}, "seed": 7, "timings": {"total_s": 0.5}}  # fmt: skip
    return dc.EdgeScores.from_values(SHAPE, values, meta)


@pytest.fixture
def sc():
    g = np.random.default_rng(0)
    n = cs.edge_graph.count_full_edges(SHAPE)
    v = g.normal(size=n)
    v[[3, 10]] = 0.0
    v[5] = np.nan
    return scores(v)


def test_top_n_and_threshold(sc):
    v = sc.frame["score"].to_numpy()
    usable = np.isfinite(v) & (v != 0)
    order = sorted(np.flatnonzero(usable), key=lambda i: -abs(v[i]))
    want = {sc.frame["edge"][i] for i in order[:7]}
    assert {e.name for e in dc.top_n(sc, 7).edges} == want
    assert len(dc.top_n(sc, 10_000).edges) == usable.sum()  # zeros and NaN never selected
    signed = {sc.frame["edge"][i] for i in sorted(np.flatnonzero(usable), key=lambda i: -v[i])[:4]}
    assert {e.name for e in dc.top_n(sc, 4, by="signed").edges} == signed
    t = dc.threshold(sc, 1.0)
    assert {e.name for e in t.edges} == set(sc.frame["edge"][usable & (np.abs(v) >= 1.0)])
    scored = {e.name: e.score for e in t.edges}
    assert all(
        scored[name] == s for name, s in zip(sc.frame["edge"], v, strict=True) if name in scored
    )


def paths_edges(edges):
    """Edges on some input -> logits path, by enumerating paths (brute force)."""
    out = set()
    succ = {}
    for e in edges:
        succ.setdefault(e[0], []).append(e)

    def walk(node, path):
        if node == "logits":
            out.update(path)
            return
        for e in succ.get(node, []):
            walk(e[1], [*path, e])

    walk("input", [])
    return out


def test_prune_and_greedy(sc):
    c = dc.top_n(sc, 12)
    keys = set(c.edge_keys())
    pruned = dc.prune(c.copy())
    assert set(pruned.edge_keys()) == paths_edges(keys)
    assert pruned.metadata["selection"]["pruned"] is True
    g = dc.greedy(sc, 12)
    gk = set(g.edge_keys())
    assert 0 < len(gk) <= 12 and paths_edges(gk) == gk


def test_greedy_skips_edges_that_cannot_reach_the_output():
    names = list(cs.edge_graph.full_edges(SHAPE))
    v = np.full(len(names), 0.01)
    big = names.index(("input", "a0.h0", "q"))  # a0.h0 sends nowhere useful here
    v[big] = 100.0
    for i, (s, _d, _) in enumerate(names):
        if s == "a0.h0":
            v[i] = 0.0  # no edge out of a0.h0 carries anything
    sc = scores(v)
    assert ("input", "a0.h0", "q") in dc.top_n(sc, 3).edge_keys()
    assert ("input", "a0.h0", "q") not in dc.greedy(sc, 3).edge_keys()


def test_circuit_file_round_trip(sc, tmp_path):
    c = dc.greedy(sc, 10, name="found")
    path = tmp_path / "found.json"
    c.save(path)
    back = cs.load_circuit(path)
    meta = json.loads(path.read_text())["metadata"]
    for k in ("method", "metric", "ablation", "data", "seed", "timings", "selection", "n_edges"):
        assert k in meta, k
    assert meta["seed"] == 7 and meta["selection"]["how"] == "greedy"
    assert {e.name: e.score for e in back.edges} == {e.name: e.score for e in c.edges}
    with pytest.raises(dc.DiscoveryError, match="kept"):
        dc.kept(sc)
    with pytest.raises(dc.DiscoveryError):
        dc.top_n(sc, 3, by="loudest")


def test_roc_auc_and_spearman_by_brute_force():
    g = np.random.default_rng(1)
    n = cs.edge_graph.count_full_edges(SHAPE)
    v = np.round(g.normal(size=n), 1)  # ties on purpose
    v[2] = np.nan
    sc = scores(v)
    ref = [
        e
        for e, keep in zip(cs.edge_graph.full_edges(SHAPE), g.random(n) < 0.3, strict=True)
        if keep
    ]
    r = np.where(np.isfinite(v), np.abs(v), -np.inf)
    inside = np.array([e in set(ref) for e in cs.edge_graph.full_edges(SHAPE)])
    pairs = [(a, b) for a, b in itertools.product(r[inside], r[~inside])]
    want = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert dc.roc_auc(sc, ref) == pytest.approx(want, abs=1e-12)
    with pytest.raises(dc.DiscoveryError):
        dc.roc_auc(sc, [])
    a = pd.Series([1.0, 2, 3, 4, np.nan], index=list("abcde"))
    b = pd.Series([1.0, 3, 2, 4, 5], index=list("abcde"))
    assert dc.spearman(a, b) == pytest.approx(0.8)


def test_curve_and_compare_on_a_tiny_model():
    m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_vocab=484, tokenizer=toy_tokenizer())
    task = cs.tasks.ioi(m, n=4, seed=0)
    sc = dc.eap(m, task)
    cv = dc.curve(m, task, sc, fractions=(0.1, 0.5, 1.0))
    f = cv[cv["metric"] == "faithfulness"]
    assert f["value"].iloc[-1] == pytest.approx(1.0)  # the full graph
    assert {"cpr", "cmd"} <= set(cv.attrs)
    found = dc.acdc(m, task, threshold=0.0, metric="logit_diff", progress=False)
    table = dc.compare(m, task, {"eap": sc, "acdc": found}, {"acdc": found}, fractions=(0.5, 1.0))
    assert list(table["method"]) == ["eap", "acdc"]
    assert {"cpr", "cmd", "roc_auc_vs_acdc", "circuit_edges", "circuit_faithfulness"} <= set(table)
    assert table.loc[1, "circuit_edges"] == found.frame["kept"].sum()
