"""Engine semantics fixed in issue 9: value equality of interventions, ops that declare what they
need, padding-aware mean ablation, edge-restricted changes from one sender to disjoint receivers,
fusion of per-head edits at named positions, and ``apply``'s captures."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import gpt2_reference as ref
import pytest
import torch

import circuitsteer as cs
from circuitsteer.engine import apply, run
from circuitsteer.engine.api import compile_plan
from circuitsteer.engine.sources import References
from circuitsteer.errors import InterventionError
from circuitsteer.interventions import Op, Site

B, P = 3, 6


@pytest.fixture(scope="module")
def model():
    return cs.random_gpt2(n_layers=3, n_heads=4, d_model=48, d_mlp=96, seed=1)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        tokens=torch.randint(0, 256, (B, P), generator=g),
        corrupted=torch.randint(0, 256, (B, P), generator=g),
        positions={"END": torch.tensor([5, 2, 3])},
    )


def vec(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


# -- value equality -----------------------------------------------------------------------------


def test_interventions_compare_and_hash_by_value():
    s = cs.Site("a1.h2", positions="END")
    a = cs.Add(s, torch.ones(8), coef=2.0)
    b = cs.Add(cs.Site("a1.h2", positions="END"), torch.ones(8, dtype=torch.float64), coef=2.0)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != cs.Add(s, torch.ones(8), coef=3.0)
    assert a != cs.Add(s, torch.ones(8) * 1.0001, coef=2.0)
    assert a != cs.Add(cs.Site("a1.h2"), torch.ones(8), coef=2.0)
    assert cs.Add(s, torch.tensor([0.0]), 1.0) == cs.Add(s, torch.tensor([-0.0]), 1.0)
    assert cs.ProjectOut(s, torch.ones(3)) == cs.ProjectOut(s, torch.ones(3))
    assert cs.Scale(s, 0.5) == cs.Scale(s, 0.5) and cs.Scale(s, 0.5) != cs.Ablate(s)
    ref_a, ref_b = torch.arange(12).view(3, 4), torch.arange(12).view(3, 4)
    assert cs.Ablate(s, "resample", ref_a) == cs.Ablate(s, "resample", ref_b)
    assert cs.Ablate(s, "resample", ref_a) != cs.Ablate(s, "resample", ref_a + 1)
    assert cs.Ablate(s, "mean", ref_a) != cs.Ablate(s, "resample", ref_a)
    cache_a = cs.engine.Cache({"a1.h2": torch.zeros(2, 3, 8)})
    cache_b = cs.engine.Cache({"a1.h2": torch.zeros(2, 3, 8)})
    assert cs.Patch(s, cache_a) == cs.Patch(s, cache_b)
    task = SimpleNamespace(clean=ref_a)  # objects without value equality compare by identity
    assert cs.Ablate(s, "mean", task) == cs.Ablate(s, "mean", task)
    assert cs.Ablate(s, "mean", task) != cs.Ablate(s, "mean", SimpleNamespace(clean=ref_a))


def test_sites_with_slices_are_hashable():
    a, b = cs.Site("m1", positions=slice(1, 4)), cs.Site("m1", positions=slice(1, 4))
    assert a == b and hash(a) == hash(b)
    assert cs.Site("m1", positions=[1, 2]) == cs.Site("m1", positions=(1, 2))
    assert cs.Site("a0.h0", to=("m1",)) != cs.Site("a0.h0", to=("m2",))


def test_ops_declare_what_they_need():
    s = cs.Site("m0")
    assert cs.Add(s, torch.ones(2)).stacks and not cs.Scale(s, 2.0).stacks
    assert cs.Ablate(s).source_kind is None and not cs.Ablate(s).needs_source
    assert cs.Ablate(s, "mean", torch.zeros(1, 2, dtype=torch.long)).source_kind == "mean"
    assert cs.Ablate(s, "resample", torch.zeros(1, 2, dtype=torch.long)).needs_source
    assert cs.Patch(s, {}).source_kind == "patch"
    assert cs.Scale(s, 2.0).affine({}) == (2.0, None) and cs.Ablate(s).affine({}) == (0.0, None)


@dataclass(frozen=True, eq=False)
class Negate(Op):
    """A new op is one class: the engine asks its declarations, never its type."""

    site: Site

    def affine(self, vecs):
        return -1.0, None

    def function(self, vecs):
        return lambda x, _src: -x


def test_a_new_op_is_one_class(model, data):
    heads = [f"a1.h{h}" for h in range(4)]
    ours, _ = run(
        model,
        data.tokens,
        [Negate(cs.Site(h, positions="END")) for h in heads],
        positions=data.positions,
    )
    scale, _ = run(
        model,
        data.tokens,
        [cs.Scale(cs.Site(h, positions="END"), -1.0) for h in heads],
        positions=data.positions,
    )
    assert torch.equal(ours, scale)
    m, _ = run(model, data.tokens, [Negate(cs.Site("m1"))])
    torch.testing.assert_close(m, run(model, data.tokens, [cs.Scale(cs.Site("m1"), -1.0)])[0])


# -- fusion -------------------------------------------------------------------------------------


def test_per_head_edits_at_named_positions_fuse_into_one_op_per_layer(model, data):
    s = model.shape
    ivs = []
    for L in range(s.n_layers):
        for h in range(s.n_heads):
            site = cs.Site(f"a{L}.h{h}", positions="END")
            kind = (L + h) % 3
            ivs.append(
                cs.Ablate(site)
                if kind == 0
                else cs.Add(site, vec(s.d_head, h), 0.5)
                if kind == 1
                else cs.Scale(site, 2.0)
            )
    edits = compile_plan(model, ivs, data.positions, References(model))
    assert len(edits) == s.n_layers  # 12 head edits -> 3 fused ops
    assert all(e.slot.kind == "z" and e.slot.head is None for e in edits)
    # fixed positions fuse too; different positions stay apart
    fixed = [cs.Scale(cs.Site(f"a0.h{h}", positions=-1), 0.5) for h in range(4)]
    assert len(compile_plan(model, fixed, None, References(model))) == 1
    mixed = [
        cs.Scale(cs.Site("a0.h0", positions="END"), 0.5),
        cs.Scale(cs.Site("a0.h1", positions=2), 0.5),
    ]
    assert len(compile_plan(model, mixed, data.positions, References(model))) == 2


# -- edges: one sender, disjoint receivers ---------------------------------------------------


def test_one_sender_two_changes_to_disjoint_receivers(model, data):
    clean, corr = {}, {}
    ref.forward(model, data.tokens, record=clean)
    ref.forward(model, data.corrupted, record=corr)
    dh = model.shape.d_head
    W_O = model.hf.transformer.h[0].attn.c_proj.weight[dh : 2 * dh]
    to_resample = (corr[("z", 0, 1)] - clean[("z", 0, 1)]) @ W_O
    to_zero = (0.0 - clean[("z", 0, 1)]) @ W_O
    ivs = [
        cs.Ablate(cs.Site("a0.h1", to=("a2.h0<q>",)), mode="resample", reference=data.corrupted),
        cs.Ablate(cs.Site("a0.h1", to=("a1.h3", "m1", "a2.h0<k>")), mode="zero"),
    ]

    def edit(point, layer, head, channel, t):
        if (point, layer, head, channel) == ("qkv_in", 2, 0, "q"):
            return t + to_resample
        if (point, layer, head) == ("qkv_in", 1, 3) or (point, layer) == ("mlp_in", 1):
            return t + to_zero
        if (point, layer, head, channel) == ("qkv_in", 2, 0, "k"):
            return t + to_zero
        return t

    logits, _ = run(model, data.tokens, ivs)
    torch.testing.assert_close(logits, ref.forward(model, data.tokens, edit), atol=2e-5, rtol=0)
    # each separately, summed as deltas, is the same computation: the two changes are independent
    with pytest.raises(InterventionError, match="conflicting"):  # a shared receiver still conflicts
        run(
            model,
            data.tokens,
            [ivs[0], cs.Ablate(cs.Site("a0.h1", to=("a2.h0",)), mode="zero")],
        )
    with pytest.raises(InterventionError, match="conflicting"):  # node-level vs edge-level
        run(model, data.tokens, [ivs[0], cs.Scale(cs.Site("a0.h1"), 2.0)])


# -- mean ablation over padded batches ------------------------------------------------------------


def test_mean_ablation_per_position_averages_real_tokens_only(model, data):
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([6, 3, 4, 2])
    toks = torch.randint(0, 256, (4, P), generator=g)
    real = torch.arange(P)[None] < lengths[:, None]
    toks = torch.where(real, toks, torch.full_like(toks, 256))  # right-padded with the pad id
    ref_task = SimpleNamespace(clean=toks, corrupted=toks, lengths=lengths, positions={})
    rec = {}
    ref.forward(model, toks, record=rec)
    out = rec[("mlp_out", 1)]
    m = real[..., None].float()
    mean = (out * m).sum(0) / m.sum(0)  # every position has a real row (length 6)
    assert not torch.allclose(mean, out.mean(0))  # padding would change it

    def edit(point, layer, head, channel, t):
        return mean.expand_as(t) if (point, layer) == ("mlp_out", 1) else t

    expected = ref.forward(model, data.tokens, edit)
    iv = cs.Ablate(cs.Site("m1"), mode="mean", reference=ref_task)
    torch.testing.assert_close(run(model, data.tokens, [iv])[0], expected, atol=2e-5, rtol=0)
    # the running task's own token tensor: its lengths are used too
    task = SimpleNamespace(
        clean=toks, corrupted=toks, lengths=lengths, positions={"END": lengths - 1}
    )
    iv2 = cs.Ablate(cs.Site("m1"), mode="mean", reference=task.clean)
    expected2 = ref.forward(model, toks, edit)
    torch.testing.assert_close(run(model, task, [iv2])[0], expected2, atol=2e-5, rtol=0)


# -- apply() --------------------------------------------------------------------------------------


def test_apply_cache_is_refilled_by_each_forward(model, data):
    ivs = [cs.Scale(cs.Site("m0"), 0.5)]
    other = torch.flip(data.tokens, dims=[0])
    want = [run(model, t, ivs, capture=["m0"])[1]["m0"] for t in (data.tokens, other)]
    with apply(model, ivs, capture=["m0", "a1.h2"]) as cache:
        assert cache == {}
        model(data.tokens)
        assert set(cache) == {"m0", "a1.h2"}
        torch.testing.assert_close(cache["m0"], want[0])
        model(other)  # the same cache, refilled
        torch.testing.assert_close(cache["m0"], want[1])
    torch.testing.assert_close(cache["m0"], want[1])  # after the block: the last forward's values
