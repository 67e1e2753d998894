"""The analysis layer on the bundled toy-ioi model, checked against TransformerLens's own caches
(the bridge's hook_pattern, hook_z, W_O, ln_final scale) and the hand-written forward in
tests/unit/gpt2_reference.py. Nothing here depends on which heads the current weights use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import circuitsteer as cs
from circuitsteer.analysis import (
    attention,
    direct_logit_attribution,
    head_scores,
    path_patching,
    path_patching_grid,
    repeated_tokens,
)

_REF = Path(__file__).resolve().parents[1] / "unit" / "gpt2_reference.py"
_spec = importlib.util.spec_from_file_location("gpt2_reference", _REF)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@pytest.fixture(scope="module")
def toy():
    model = cs.load_model("toy-ioi")
    return model, cs.tasks.ioi(model, n=48, seed=5)


def test_head_scores_match_transformer_lens_patterns(toy):
    model, _ = toy
    S = 15
    df = head_scores(model, n=16, seq_len=S, seed=3, batch=7)
    _, cache = model.bridge.run_with_cache(repeated_tokens(model, n=16, seq_len=S, seed=3))
    for row in df.itertuples():
        p = cache[f"blocks.{row.layer}.attn.hook_pattern"][:, row.head]  # [batch, q, k]
        # TL-style stripes: diagonal k = q - offset, kept from the first query that scores
        offset, first = {
            "previous_token": (1, 1),
            "duplicate_token": (S, S + 1),
            "induction": (S - 1, S + 1),
        }[row.kind]
        stripe = p.diagonal(offset=-offset, dim1=-2, dim2=-1)[:, first - offset :]
        assert row.score == pytest.approx(stripe.mean().item(), abs=1e-5), (row.node, row.kind)


def test_dla_matches_transformer_lens_and_sums_to_the_logit_diff(toy):
    model, task = toy
    df = direct_logit_attribution(model, task, batch=20)
    logits, _ = cs.engine.run(model, task)
    ld = cs.metrics.logit_diff(logits, task).mean().item()
    assert df.dla.sum() == pytest.approx(ld, abs=1e-4)

    b = model.bridge
    _, cache = b.run_with_cache(task.clean)
    r, end = torch.arange(len(task)), task.positions["END"]
    scale = cache["ln_final.hook_scale"][r, end]  # [batch, 1]
    u = b.W_U[:, task.correct].T - b.W_U[:, task.incorrect].T  # [batch, d_model]
    w = model.hf.transformer.ln_f.weight

    def dla(part):
        part = part.expand_as(u)
        return ((part - part.mean(-1, keepdim=True)) / scale * w * u).sum(-1).mean().item()

    got = dict(zip(df.node, df.dla, strict=True))
    for L in range(model.shape.n_layers):
        z = cache[f"blocks.{L}.attn.hook_z"][r, end]  # [batch, head, d_head]
        for h in range(model.shape.n_heads):
            assert got[f"a{L}.h{h}"] == pytest.approx(dla(z[:, h] @ b.W_O[L, h]), abs=1e-4)
        assert got[f"m{L}"] == pytest.approx(
            dla(cache[f"blocks.{L}.hook_mlp_out"][r, end]), abs=1e-4
        )
    emb = cache["hook_embed"][r, end] + cache["hook_pos_embed"][r, end]
    assert got["input"] == pytest.approx(dla(emb), abs=1e-4)
    assert got["bias"] == pytest.approx(dla(b.b_O.sum(0)), abs=1e-4)  # the attention output biases


def test_attention_rows_sum_to_at_most_one_and_orders_split_the_task(toy):
    model, task = toy
    df = attention(model, task, to=("IO", "S1", "S1+1", "S2"))
    assert (df.groupby(["node", "order"]).attention.sum() <= 1 + 1e-6).all()
    assert (df.attention >= 0).all()
    n = df[df.node == "a0.h0"].groupby("order").n.first()
    assert n["ABBA"] + n["BABA"] == n["all"] == len(task)
    # per-order means average back to the overall mean
    for (_node, _to), g in df.groupby(["node", "to"]):
        g = g.set_index("order")
        mixed = (g.attention["ABBA"] * g.n["ABBA"] + g.attention["BABA"] * g.n["BABA"]) / g.n["all"]
        assert g.attention["all"] == pytest.approx(mixed, abs=1e-6)


def test_path_patching_equals_the_hand_computation(toy):
    model, task = toy
    df = path_patching(model, task, ["a0.h2", "a1.h3"], ["a3.h0<q>", "a2.h1<k>"], positions="END")
    clean, corrupted = {}, {}
    ref.forward(model, task.clean, record=clean)
    ref.forward(model, task.corrupted, record=corrupted)
    keep = torch.zeros(task.clean.shape, dtype=torch.bool)
    keep[torch.arange(len(task)), task.positions["END"]] = True
    delta = {
        h: (corrupted[("head_resid", L, i)] - clean[("head_resid", L, i)]) * keep[..., None]
        for h, (L, i) in {"a0.h2": (0, 2), "a1.h3": (1, 3)}.items()
    }
    gets = {
        ("qkv_in", 3, 0, "q"): delta["a0.h2"] + delta["a1.h3"],
        ("qkv_in", 2, 1, "k"): delta["a0.h2"] + delta["a1.h3"],
    }

    def edit(point, layer, head, channel, t):
        return t + gets.get((point, layer, head, channel), 0)

    want = cs.metrics.logit_diff(ref.forward(model, task.clean, edit), task).mean().item()
    assert df.patched.item() == pytest.approx(want, abs=1e-4)


def test_path_patching_invariants(toy):
    model, task = toy
    everything = ["input", *cs.nodes.all_heads(model.shape), *cs.nodes.all_mlps(model.shape)]
    full = path_patching(model, task, everything, "logits")
    assert full.patched.item() == pytest.approx(full.corrupted.item(), abs=1e-3)
    assert full.frac_of_gap.item() == pytest.approx(1.0, abs=1e-3)
    # the trained model separates clean from corrupted, so the gap is a real denominator
    assert full.clean.item() - full.corrupted.item() > 1.0
    grid = path_patching_grid(model, task, receivers=["a3.h0", "m3", "logits"], positions="END")
    assert len(grid) == model.shape.n_layers * model.shape.n_heads
    one = path_patching(model, task, "a2.h2", ["a3.h0", "m3", "logits"], positions="END")
    assert grid[grid.node == "a2.h2"].patched.item() == pytest.approx(one.patched.item(), abs=1e-5)
