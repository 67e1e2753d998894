"""The analysis functions on every architecture family the engine supports (GPT-2, GPT-NeoX with
its parallel residual, Llama with RMSNorm and grouped-query attention)."""

from __future__ import annotations

import pytest
import torch

import circuitsteer as cs
from circuitsteer.zoo.tokenizer import toy_tokenizer

random_model = getattr(cs.models, "random_model", None)
pytestmark = pytest.mark.skipif(random_model is None, reason="this build has GPT-2 only")

FAMILIES = [("gpt2", {}), ("gpt_neox", {}), ("llama", {"n_kv_heads": 2})]


@torch.no_grad()
def family_model(family, kw):
    assert random_model is not None
    m = random_model(
        family,
        n_layers=3,
        n_heads=4,
        d_model=48,
        d_vocab=484,
        tokenizer=toy_tokenizer(),
        seed=1,
        **kw,
    )
    g = torch.Generator().manual_seed(0)
    for p in m.hf.parameters():  # unit-scale weights: effects large enough to compare
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return m


@pytest.mark.parametrize(("family", "kw"), FAMILIES)
def test_dla_sums_and_path_patching_identity(family, kw):
    m = family_model(family, kw)
    task = cs.tasks.ioi(m, n=8, seed=0)
    ld = cs.metrics.logit_diff(cs.engine.run(m, task)[0], task).mean().item()
    dla = cs.analysis.direct_logit_attribution(m, task)
    assert dla.dla.sum() == pytest.approx(ld, abs=1e-4)
    everything = ["input", *cs.nodes.all_heads(m.shape), *cs.nodes.all_mlps(m.shape)]
    pp = cs.analysis.path_patching(m, task, everything, "logits")
    assert pp.patched.item() == pytest.approx(pp.corrupted.item(), abs=1e-4)
    assert pp.clean.item() != pytest.approx(pp.corrupted.item(), abs=1e-3)


@pytest.mark.parametrize(("family", "kw"), FAMILIES)
def test_grid_senders_follow_the_edge_rule(family, kw):
    m = family_model(family, kw)
    task = cs.tasks.ioi(m, n=4, seed=0)
    g = cs.analysis.path_patching_grid(m, task, receivers=["m1"])
    # heads of layer 1 feed m1 unless the residual is parallel (then m1 reads the layer's input)
    layers = {0} if getattr(m.shape, "parallel_residual", False) else {0, 1}
    assert set(g.layer) == layers
    assert len(cs.analysis.head_scores(m, n=2, seq_len=6)) == 3 * 4 * 3
