"""The effect analyses on every family: Llama (RMSNorm, grouped KV), Qwen2 (q/k/v bias, grouped
KV) and GPT-NeoX (parallel residual: a layer's heads do not feed its MLP). The exact identities
hold there too: coefficient 0 inert, through == total with the full graph, nothing upstream
moves, full circuit == model, empty circuit == ablated baseline."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs
from circuitsteer.zoo.tokenizer import toy_tokenizer

A = cs.analysis
FAMILIES = {"llama": {"n_kv_heads": 2}, "qwen2": {"n_kv_heads": 2}, "gpt_neox": {}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identities_on_every_family(family):
    m = cs.random_model(family, n_layers=2, n_heads=4, d_model=32, d_vocab=484,
                        tokenizer=toy_tokenizer(), **FAMILIES[family])  # fmt: skip
    task = cs.tasks.ioi(m, n=6, seed=1)
    full = cs.full_edge_graph(m.shape)
    df = A.compare_ablation_addition(m, task, nodes=["a1.h2", "m0"], coefs=[0.0, 1.0], progress=False)  # fmt: skip
    assert (df[df.coef == 0].effect == 0).all() and df.value.notna().all()
    de = A.downstream_effects(m, task, full, cs.Ablate(cs.Site("a0.h1"), mode="zero"), nodes="all")
    ch = de[de.metric != "out_cosine"]
    assert float(ch[ch.part == "rest"].mean_abs.max()) == 0.0
    assert float(ch[ch.relation == "upstream"].mean_abs.max()) == 0.0
    assert float(ch[(ch.relation == "downstream") & (ch.part == "total")].mean_abs.max()) > 0
    v = cs.vectors.SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(0)),
                                  site="resid_pre.1")  # fmt: skip
    sw = A.coefficient_sweep(m, v, coefs=[1.0, 100.0], task=task,
                             neutral=cs.tasks.neutral(m, n=4), n_diag=2, progress=False)  # fmt: skip
    scale = sw[(sw.level == "layer") & (sw.metric == "norm_scale_ratio")].set_index(["coef", "layer"])  # fmt: skip
    assert scale.loc[(100.0, 0), "value"] == 1.0 and scale.loc[(100.0, 1), "value"] > 10
    for level in ("node", "edge"):
        f = A.faithfulness(m, task, full, ablation="resample", level=level).iloc[0]
        e = A.faithfulness(m, task, cs.Circuit("e", shape=m.shape), ablation="mean", level=level)
        assert f.value == 1.0 and e.circuit_value.item() == e.ablated_value.item()
