"""The analysis layer on the zoo model ioi-circuit and its shipped IOI circuit: ablating the
circuit's most important head lowers the logit difference, additions at coefficient 0 change
nothing, the full circuit is faithful by construction, the empty one is the ablated baseline,
downstream effects split exactly, and a coefficient sweep finds where the model breaks with the
residual-norm ratio reported there."""

from __future__ import annotations

import pandas as pd
import pytest

import circuitsteer as cs
from circuitsteer.analysis import (
    COLUMNS,
    break_point,
    coefficient_sweep,
    compare_ablation_addition,
    downstream_effects,
    faithfulness,
    pca_study,
)


@pytest.fixture(scope="module")
def zoo():
    model = cs.load_model("ioi-circuit")
    task = cs.tasks.ioi(model, n=100, seed=0)
    circuit = cs.load_circuit("ioi-circuit/ioi")
    return model, task, circuit


def _top_head(circuit) -> str:
    """The circuit's head whose path to the logits carries the largest share (its evidence)."""
    return max(circuit.heads, key=lambda h: circuit.node(h)["meta"].get("pp_logits", 0.0))


def test_ablating_the_most_important_head_lowers_the_logit_diff(zoo):
    model, task, circuit = zoo
    head = _top_head(circuit)
    df = compare_ablation_addition(model, task, circuit, nodes=[head], coefs=[0.0, 1.0, 4.0],
                                   progress=False)  # fmt: skip
    abl = df[df.operation == "ablate"].set_index("mode")
    assert (abl.effect_hi < 0).all(), abl[["effect", "effect_lo", "effect_hi"]]
    assert (abl.frac_of_gap > 0.3).all()  # a large share of the clean - ABC gap, every mode
    add = df[df.operation == "add"]
    zero = add[add.coef == 0.0]
    assert (zero.effect == 0.0).all() and (zero.value == zero.clean).all()
    assert df.positions.iloc[0] == "END"  # the head's circuit position
    assert (df.model == "ioi-circuit").all() and list(df.columns[: len(COLUMNS)]) == list(COLUMNS)


def test_faithfulness_full_and_empty(zoo):
    model, task, circuit = zoo
    full = faithfulness(model, task, cs.full_edge_graph(model.shape), ablation="mean")
    assert full.value.item() == 1.0
    shipped = faithfulness(model, task, circuit, ablation="mean")
    empty = faithfulness(model, task, cs.Circuit("none", shape=model.shape), ablation="mean")
    assert empty.circuit_value.item() == empty.ablated_value.item() == shipped.ablated_value.item()
    # the shipped circuit recovers most of the model's logit difference over the ablated model
    assert 0.5 < shipped.normalized.item() <= 1.05
    both = pd.concat([full, shipped, empty])  # tables from different calls concatenate
    assert list(both.columns[: len(COLUMNS)]) == list(COLUMNS) and len(both) == 3


def test_downstream_effects_split(zoo):
    model, task, circuit = zoo
    iv = cs.Ablate(cs.Site("a1.h3", positions="S2"), mode="resample", reference=task.corrupted)
    full = downstream_effects(model, task, cs.full_edge_graph(model.shape), iv, nodes="all")
    ch = full[full.metric != "out_cosine"]
    assert float(ch[ch.part == "rest"].mean_abs.max()) == 0.0
    assert float(ch[ch.relation == "upstream"].mean_abs.max()) == 0.0
    df = downstream_effects(model, task, circuit, iv)
    tot = df[(df.part == "total") & (df.metric == "dla_delta")].set_index("node").value
    thr = df[(df.part == "through_circuit") & (df.metric == "dla_delta")].set_index("node").value
    rest = df[(df.part == "rest") & (df.metric == "dla_delta")].set_index("node").value
    assert (tot - thr - rest).abs().max() < 1e-9
    assert float(tot.abs().max()) > 1e-3  # the induction head's change reaches the writers


def test_sweep_finds_the_break_point(zoo):
    model, task, _ = zoo
    v = cs.vectors.mean_difference(model, "resid_pre.2", task, positions="END", progress=False)
    df = coefficient_sweep(model, v, coefs=[1, 4, 16, 64], task=task, kl_threshold=1.0,
                           n_diag=16, progress=False)  # fmt: skip
    bp = df.attrs["break_point"]
    assert bp["coef"] is not None and bp["kl"] >= 1.0
    at = break_point(df).set_index(["metric", "layer"]).value
    assert at[("vec_ratio", 2)] > 0.5  # ||c v|| / ||x|| at the site, reported at the break
    assert at[("resid_norm_ratio", 2)] > 1.2  # the residual has grown at the site's layer
    ld = df[(df.level == "coef") & (df.data == "task") & (df.metric == "logit_diff")]
    assert ld.set_index("coef").loc[0.0, "effect"] == 0.0


def test_pca_study_runs_on_the_zoo(zoo):
    model, task, _ = zoo
    df = pca_study(model, task, "resid_pre.2", k=2, coefs=[2.0], positions="END", progress=False)
    ld = df[df.metric == "logit_diff"]
    assert len(ld) == 2 * 3 * 2 and ld.value.notna().all() and ld.top_tokens.str.len().min() > 0
