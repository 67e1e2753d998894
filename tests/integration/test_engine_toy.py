"""The engine on the bundled toy-ioi model: patching agrees with TransformerLens, heads matter."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

import circuitsteer as cs


@pytest.fixture(scope="module")
def toy():
    model = cs.load_model("toy-ioi")
    task = cs.tasks.ioi(model, n=24, seed=1)
    return model, task


def test_resample_all_heads_equals_tl_patching_on_toy_ioi(toy):
    model, task = toy
    s = model.shape

    def metric(logits):
        return cs.metrics.logit_diff(logits, task).mean()

    _, corrupted_cache = model.bridge.run_with_cache(task.corrupted)
    tl = patching.get_act_patch_attn_head_out_all_pos(
        model.bridge, task.clean, corrupted_cache, metric
    )
    variants = [
        [cs.Ablate(cs.Site(h), mode="resample", reference=task.corrupted)]
        for h in cs.nodes.all_heads(s)
    ]
    ours = cs.engine.run_variants(model, task, variants, reduce=metric).logits.view(
        s.n_layers, s.n_heads
    )
    torch.testing.assert_close(ours, tl, atol=1e-4, rtol=0)
    clean = metric(cs.engine.run(model, task)[0])
    # some head carries the name-mover signal: resampling it moves the logit difference a lot
    assert (clean - ours).abs().max() > 0.5


def test_mean_ablation_at_named_positions_runs_on_a_task(toy):
    model, task = toy
    ivs = [
        cs.Ablate(cs.Site(h, positions="END"), mode="mean", reference=task.corrupted)
        for h in ("a3.h0", "a3.h1")
    ]
    logits, cache = cs.engine.run(model, task, ivs, capture=["a3.h0"])
    end = task.positions["END"]
    got = cache["a3.h0"][torch.arange(len(task)), end]
    _, ref = cs.engine.run(model, task.corrupted, [], capture=["a3.h0"])
    expected = ref["a3.h0"][torch.arange(len(task)), end].mean(0)
    torch.testing.assert_close(got, expected.expand_as(got))
    assert torch.isfinite(cs.metrics.logit_diff(logits, task)).all()
