"""Per-head resample ablation equals TransformerLens's own ``transformer_lens.patching``."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

import circuitsteer as cs


@pytest.fixture(scope="module")
def setup():
    model = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32, seed=1)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (3, 6), generator=g)
    corrupted = torch.randint(0, 256, (3, 6), generator=g)
    _, corrupted_cache = model.bridge.run_with_cache(corrupted)
    return model, clean, corrupted, corrupted_cache


def metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()


def test_resample_per_head_all_positions_equals_tl_patching(setup):
    model, clean, corrupted, corrupted_cache = setup
    # TL patches the given cache into a run on the given tokens: "corrupted_tokens" is our clean run
    tl = patching.get_act_patch_attn_head_out_all_pos(model.bridge, clean, corrupted_cache, metric)
    heads = [(L, h) for L in range(2) for h in range(4)]
    variants = [
        [cs.Ablate(cs.Site(f"a{L}.h{h}"), mode="resample", reference=corrupted)] for L, h in heads
    ]
    ours = cs.engine.run_variants(model, clean, variants, reduce=lambda lg: metric(lg)).logits.view(
        2, 4
    )
    torch.testing.assert_close(ours, tl, atol=1e-5, rtol=0)
    assert tl.abs().max() > 1e-3  # the comparison is not between two zeros


def test_resample_per_head_per_position_equals_tl_patching(setup):
    model, clean, corrupted, corrupted_cache = setup
    tl = patching.get_act_patch_attn_head_out_by_pos(
        model.bridge, clean, corrupted_cache, metric
    )  # [L, pos, H]
    ours = torch.zeros_like(tl)
    for L in range(2):
        for p in range(clean.shape[1]):
            for h in range(4):
                iv = cs.Ablate(
                    cs.Site(f"a{L}.h{h}", positions=p), mode="resample", reference=corrupted
                )
                ours[L, p, h] = metric(cs.engine.run(model, clean, [iv])[0])
    torch.testing.assert_close(ours, tl, atol=1e-5, rtol=0)
