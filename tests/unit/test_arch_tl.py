"""TransformerLens's bridge as a second oracle on every family: node-level operations made with
the bridge's hook points equal the engine's, and per-head resample ablation equals
``transformer_lens.patching``."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

import circuitsteer as cs

FAMILIES = {
    "gpt_neox": ("gpt_neox", {}),
    "llama-gqa": ("llama", {"n_kv_heads": 2}),
    "qwen2-gqa": ("qwen2", {"n_kv_heads": 2}),
    "mistral": ("mistral", {}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def setup(request):
    family, cfg = FAMILIES[request.param]
    model = cs.random_model(family, n_layers=2, n_heads=4, d_model=32, seed=3, **cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    clean = torch.randint(0, 256, (2, 5), generator=g)
    corrupted = torch.randint(0, 256, (2, 5), generator=g)
    return model, clean, corrupted


def test_node_level_operations_equal_bridge_hooks(setup):
    model, clean, _ = setup
    s = model.shape
    v_d = torch.randn(s.d_model, generator=torch.Generator().manual_seed(2))

    def zero_head(act, hook):
        act[:, -1, 2] = 0.0
        return act

    def add_mlp(act, hook):
        return act + v_d

    def scale_resid(act, hook):
        return act * 0.5

    hooks = [
        ("blocks.1.attn.hook_z", zero_head),
        ("blocks.0.hook_mlp_out", add_mlp),
        ("blocks.1.hook_resid_pre", scale_resid),
    ]
    with torch.no_grad():
        tl = model.bridge.run_with_hooks(clean, return_type="logits", fwd_hooks=hooks)
    ivs = [
        cs.Ablate(cs.Site("a1.h2", positions=-1)),
        cs.Add(cs.Site("m0"), v_d),
        cs.Scale(cs.Site("resid_pre.1"), 0.5),
    ]
    ours, _ = cs.engine.run(model, clean, ivs)
    torch.testing.assert_close(ours, tl, atol=2e-5, rtol=0)
    assert (ours - cs.engine.run(model, clean, [])[0]).abs().max() > 1e-3


def test_resample_per_head_equals_tl_patching(setup):
    model, clean, corrupted = setup

    def metric(logits):
        return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()

    _, corrupted_cache = model.bridge.run_with_cache(corrupted)
    tl = patching.get_act_patch_attn_head_out_all_pos(model.bridge, clean, corrupted_cache, metric)
    heads = [cs.nodes.head(L, h) for L in range(2) for h in range(4)]
    variants = [[cs.Ablate(cs.Site(h), mode="resample", reference=corrupted)] for h in heads]
    ours = cs.engine.run_variants(model, clean, variants, reduce=metric).logits.view(2, 4)
    torch.testing.assert_close(ours, tl, atol=2e-5, rtol=0)
    assert tl.abs().max() > 1e-4
