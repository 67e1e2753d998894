"""The engine against an independent hand-written forward (tests/unit/gpt2_reference.py)."""

from __future__ import annotations

from types import SimpleNamespace

import gpt2_reference as ref
import pytest
import torch

import circuitsteer as cs
from circuitsteer.engine import apply, run, run_variants
from circuitsteer.errors import InterventionError, NodeNameError, PositionError, ShapeMismatchError

B, P = 3, 7


@pytest.fixture(scope="module")
def model():
    return cs.random_gpt2(n_layers=3, n_heads=4, d_model=48, d_mlp=96, seed=1)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (B, P), generator=g)
    corrupted = torch.randint(0, 256, (B, P), generator=g)
    ref_tokens = torch.randint(0, 256, (5, P), generator=g)
    end = torch.tensor([6, 5, 4])
    io = torch.tensor([1, 2, 1])
    return SimpleNamespace(
        tokens=tokens,
        corrupted=corrupted,
        ref_tokens=ref_tokens,
        positions={"END": end, "IO": io},
        ref_task=SimpleNamespace(
            clean=ref_tokens,
            positions={"END": torch.tensor([6, 6, 5, 4, 3]), "IO": torch.tensor([0, 1, 2, 3, 1])},
        ),
    )


def vec(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def at(target, fn):
    """An edit for the reference forward that changes one activation."""

    def edit(point, layer, head, channel, t):
        if (point, layer, head, channel) == target:
            return fn(t)
        return t

    return edit


def rows_pos(positions):
    return torch.arange(B)[:, None], positions[:, None]


def test_reference_forward_matches_hf(model, data):
    with torch.no_grad():
        torch.testing.assert_close(
            ref.forward(model, data.tokens), model(data.tokens), atol=1e-5, rtol=0
        )


def test_no_interventions_is_the_raw_forward(model, data):
    logits, cache = run(model, data.tokens, [])
    with torch.no_grad():
        raw = model.hf(input_ids=data.tokens, use_cache=False).logits
    assert torch.equal(logits, raw) and cache == {}


def add_at(idx, v):
    def fn(t):
        t = t.clone()
        t[idx] += v
        return t

    return fn


def set_at(idx, value):
    def fn(t):
        t = t.clone()
        t[idx] = value if not callable(value) else value(t[idx])
        return t

    return fn


def cases(model, data):
    s = model.shape
    end = data.positions["END"]
    r_end = rows_pos(end)
    v_dh, v_d, v_mlp = vec(s.d_head, 1), vec(s.d_model, 2), vec(s.d_mlp, 3)
    every = (slice(None), slice(None))
    clean_rec, corr_rec, other_rec, refrec = {}, {}, {}, {}
    ref.forward(model, data.tokens, record=clean_rec)
    ref.forward(model, data.corrupted, record=corr_rec)
    ref.forward(model, data.ref_tokens, record=refrec)
    other = torch.flip(data.tokens, dims=[0])
    ref.forward(model, other, record=other_rec)
    _, other_cache = run(model, other, [], capture=["a1.h3"])
    d = vec(s.d_head, 4)
    dn = d / d.norm()
    D = vec(s.d_model, 5)
    Dn = D / D.norm()
    ref_end = data.ref_task.positions["END"]
    mean_end = refrec[("z", 1, 0)][torch.arange(5), ref_end].mean(0)
    return {
        "add z head positions [2,5]": (
            [cs.Add(cs.Site("a1.h2", positions=[2, 5]), v_dh, coef=3.0)],
            at(("z", 1, 2, None), add_at((slice(None), [2, 5]), 3.0 * v_dh)),
        ),
        "add head output in d_model": (
            [cs.Add(cs.Site("a1.h2"), v_d, coef=-2.0, space="resid")],
            at(("head_resid", 1, 2, None), add_at(every, -2.0 * v_d)),
        ),
        "add head k input at END": (
            [cs.Add(cs.Site("a2.h1", positions="END", channel="k"), v_d, coef=1.5)],
            at(("qkv_in", 2, 1, "k"), add_at(r_end, 1.5 * v_d)),
        ),
        "add mlp out": (
            [cs.Add(cs.Site("m0"), v_d)],
            at(("mlp_out", 0, None, None), add_at(every, v_d)),
        ),
        "add mlp neurons at pos 3": (
            [cs.Add(cs.Site("m1", positions=3), v_mlp, space="neurons")],
            at(("neurons", 1, None, None), add_at((slice(None), [3]), v_mlp)),
        ),
        "add one neuron": (
            [cs.Add(cs.Site("m2.n5"), torch.tensor([4.0]))],
            at(("neurons", 2, None, None), add_at((Ellipsis, 5), 4.0)),
        ),
        "add resid_pre": (
            [cs.Add(cs.Site("resid_pre.1", positions="IO"), v_d)],
            at(("resid_pre", 1, None, None), add_at(rows_pos(data.positions["IO"]), v_d)),
        ),
        "add resid_mid": (
            [cs.Add(cs.Site("resid_mid.0"), v_d, coef=0.5)],
            at(("resid_mid", 0, None, None), add_at(every, 0.5 * v_d)),
        ),
        "add resid_post": (
            [cs.Add(cs.Site("resid_post.2", positions=-1), v_d)],
            at(("resid_post", 2, None, None), add_at((slice(None), [-1]), v_d)),
        ),
        "add input": (
            [cs.Add(cs.Site("input", positions=0), v_d)],
            at(("resid_pre", 0, None, None), add_at((slice(None), [0]), v_d)),
        ),
        "zero-ablate head at END": (
            [cs.Ablate(cs.Site("a0.h3", positions="END"), mode="zero")],
            at(("z", 0, 3, None), set_at(r_end, 0.0)),
        ),
        "zero-ablate mlp": (
            [cs.Ablate(cs.Site("m1"), mode="zero")],
            at(("mlp_out", 1, None, None), set_at(every, 0.0)),
        ),
        "mean-ablate head at named END over a reference task": (
            [cs.Ablate(cs.Site("a1.h0", positions="END"), mode="mean", reference=data.ref_task)],
            at(("z", 1, 0, None), set_at(r_end, mean_end)),
        ),
        "mean-ablate mlp per position": (
            [cs.Ablate(cs.Site("m2"), mode="mean", reference=data.ref_tokens)],
            at(("mlp_out", 2, None, None), set_at(every, refrec[("mlp_out", 2)].mean(0))),
        ),
        "resample-ablate head": (
            [cs.Ablate(cs.Site("a2.h3"), mode="resample", reference=data.corrupted)],
            at(("z", 2, 3, None), set_at(every, corr_rec[("z", 2, 3)])),
        ),
        "resample-ablate resid_mid at END": (
            [
                cs.Ablate(
                    cs.Site("resid_mid.1", positions="END"),
                    mode="resample",
                    reference=data.corrupted,
                )
            ],
            at(("resid_mid", 1, None, None), set_at(r_end, corr_rec[("resid_mid", 1)][r_end])),
        ),
        "project out of z": (
            [cs.ProjectOut(cs.Site("a1.h1"), d)],
            at(("z", 1, 1, None), lambda t: t - (t @ dn)[..., None] * dn),
        ),
        "project out of a head's d_model output": (
            [cs.ProjectOut(cs.Site("a0.h2", positions=[1, 2]), D, space="resid")],
            at(
                ("head_resid", 0, 2, None),
                set_at((slice(None), [1, 2]), lambda t: t - (t @ Dn)[..., None] * Dn),
            ),
        ),
        "project out of resid_post": (
            [cs.ProjectOut(cs.Site("resid_post.0"), D)],
            at(("resid_post", 0, None, None), lambda t: t - (t @ Dn)[..., None] * Dn),
        ),
        "scale head over a slice": (
            [cs.Scale(cs.Site("a0.h0", positions=slice(1, 4)), 0.5)],
            at(("z", 0, 0, None), set_at((slice(None), slice(1, 4)), lambda t: t * 0.5)),
        ),
        "scale a neuron": (
            [cs.Scale(cs.Site("m0.n7"), 2.0)],
            at(("neurons", 0, None, None), set_at((Ellipsis, 7), lambda t: t * 2)),
        ),
        "project out of q input": (
            [cs.ProjectOut(cs.Site("a1.h2", channel="q"), D)],
            at(("qkv_in", 1, 2, "q"), lambda t: t - (t @ Dn)[..., None] * Dn),
        ),
        "patch head from another run's cache at END": (
            [cs.Patch(cs.Site("a1.h3", positions="END"), other_cache)],
            at(("z", 1, 3, None), set_at(r_end, other_rec[("z", 1, 3)][r_end])),
        ),
    }


CASE_NAMES = [
    "add z head positions [2,5]",
    "add head output in d_model",
    "add head k input at END",
    "add mlp out",
    "add mlp neurons at pos 3",
    "add one neuron",
    "add resid_pre",
    "add resid_mid",
    "add resid_post",
    "add input",
    "zero-ablate head at END",
    "zero-ablate mlp",
    "mean-ablate head at named END over a reference task",
    "mean-ablate mlp per position",
    "resample-ablate head",
    "resample-ablate resid_mid at END",
    "project out of z",
    "project out of a head's d_model output",
    "project out of resid_post",
    "scale head over a slice",
    "scale a neuron",
    "project out of q input",
    "patch head from another run's cache at END",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_operation_equals_hand_computed_forward(model, data, name):
    ivs, edit = cases(model, data)[name]
    expected = ref.forward(model, data.tokens, edit)
    logits, _ = run(model, data.tokens, ivs, positions=data.positions)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=0)
    clean = ref.forward(model, data.tokens)
    assert (expected - clean).abs().max() > 1e-4, "the case must change the output"


def test_captures_equal_reference_records(model, data):
    rec = {}
    ivs = [cs.Add(cs.Site("a0.h1"), vec(12), coef=2.0)]
    v = 2.0 * vec(12)
    expected = ref.forward(model, data.tokens, at(("z", 0, 1, None), lambda t: t + v), record=rec)
    names = [
        "a0.h1",
        "a1.h2:result",
        "a1.h0<k>",
        "a2.h3:pattern",
        "m1",
        "m1:in",
        "m2:neurons",
        "m0.n3",
        "resid_pre.1",
        "resid_mid.2",
        "resid_post.0",
        "input",
        "logits:in",
    ]
    logits, cache = run(model, data.tokens, ivs, capture=names)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=0)
    want = {
        "a0.h1": rec[("z", 0, 1)],
        "a1.h2:result": rec[("head_resid", 1, 2)],
        "a1.h0<k>": rec[("qkv_in", 1, 0, "k")],
        "a2.h3:pattern": rec[("pattern", 2, 3)],
        "m1": rec[("mlp_out", 1)],
        "m1:in": rec[("mlp_in", 1)],
        "m2:neurons": rec[("neurons", 2)],
        "m0.n3": rec[("neurons", 0)][..., 3:4],
        "resid_pre.1": rec[("resid_pre", 1)],
        "resid_mid.2": rec[("resid_mid", 2)],
        "resid_post.0": rec[("resid_post", 0)],
        "input": rec[("resid_pre", 0)],
        "logits:in": rec[("logits_in", -1)],
    }
    for n, t in want.items():
        torch.testing.assert_close(cache[n], t, atol=2e-5, rtol=0, msg=n)


# -- edges ------------------------------------------------------------------------------------


def test_edge_restricted_add_reaches_only_receivers(model, data):
    s = model.shape
    v = vec(s.d_head, 7)
    W_O = model.hf.transformer.h[0].attn.c_proj.weight[1 * s.d_head : 2 * s.d_head]
    delta = (2.0 * v) @ W_O
    ivs = [cs.Add(cs.Site("a0.h1", to=("a2.h0<q>", "m1")), v, coef=2.0)]

    def edit(point, layer, head, channel, t):
        if (point, layer, head, channel) in {("qkv_in", 2, 0, "q"), ("mlp_in", 1, None, None)}:
            return t + delta
        return t

    expected = ref.forward(model, data.tokens, edit)
    logits, _ = run(model, data.tokens, ivs)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=0)


def test_edge_restricted_resample_equals_hand_computed(model, data):
    clean, corr = {}, {}
    ref.forward(model, data.tokens, record=clean)
    ref.forward(model, data.corrupted, record=corr)
    dh = model.shape.d_head
    W_O = model.hf.transformer.h[0].attn.c_proj.weight[2 * dh : 3 * dh]
    delta = (corr[("z", 0, 2)] - clean[("z", 0, 2)]) @ W_O
    end = data.positions["END"]
    mask = torch.zeros(B, P, 1)
    mask[torch.arange(B), end] = 1.0

    def edit(point, layer, head, channel, t):
        if point == "qkv_in" and (layer, head) == (1, 1):
            return t + delta * mask
        return t

    expected = ref.forward(model, data.tokens, edit)
    ivs = [
        cs.Ablate(
            cs.Site("a0.h2", positions="END", to=("a1.h1",)),
            mode="resample",
            reference=data.corrupted,
        )
    ]
    logits, _ = run(model, data.tokens, ivs, positions=data.positions)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=0)


def test_edge_restricted_other_readers_bit_identical(model, data):
    s = model.shape
    readers = [
        f"a{L}.h{h}<{c}>" for L in range(s.n_layers) for h in range(s.n_heads) for c in "qkv"
    ]
    readers += [
        "m0:in",
        "m1:in",
    ]  # m2 reads a2.h0's output, so it sees the change through the receiver
    others_z = [f"a2.h{h}" for h in (1, 2, 3)]
    capture = readers + others_z + ["a0.h1"]
    _, clean = run(model, data.tokens, [], capture=capture)
    ivs = [cs.Add(cs.Site("a0.h1", positions="END", to=("a2.h0<q>",)), vec(s.d_head, 9), coef=5.0)]
    _, steered = run(model, data.tokens, ivs, capture=capture, positions=data.positions)
    for name in capture:
        if name == "a2.h0<q>":
            assert not torch.equal(steered[name], clean[name])
        else:
            assert torch.equal(steered[name], clean[name]), (
                name
            )  # sender output itself stays clean too


def test_node_level_add_changes_every_reader(model, data):
    _, clean = run(model, data.tokens, [], capture=["a2.h0<k>", "m1:in"])
    _, steered = run(
        model,
        data.tokens,
        [cs.Add(cs.Site("a0.h1"), vec(12), coef=5.0)],
        capture=["a2.h0<k>", "m1:in"],
    )
    assert not torch.equal(clean["a2.h0<k>"], steered["a2.h0<k>"]) and not torch.equal(
        clean["m1:in"], steered["m1:in"]
    )


def test_edge_to_logits_and_from_mlp_and_input(model, data):
    s = model.shape
    v = vec(s.d_model, 11)
    ivs = [
        cs.Add(cs.Site("m0", to=("logits",)), v),
        cs.Add(cs.Site("input", positions=2, to=("a1.h3<v>",)), v),
    ]

    def edit(point, layer, head, channel, t):
        if point == "logits_in":
            return t + v
        if (point, layer, head, channel) == ("qkv_in", 1, 3, "v"):
            t = t.clone()
            t[:, 2] += v
        return t

    expected = ref.forward(model, data.tokens, edit)
    logits, _ = run(model, data.tokens, ivs)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=0)


# -- cleanup ----------------------------------------------------------------------------------


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.hf.modules())


def test_hooks_removed_and_logits_identical_after_error(model, data):
    before = model(data.tokens).detach()
    ivs = [
        cs.Add(cs.Site("a1.h2", to=("a2.h0",)), vec(12), coef=3.0),
        cs.Ablate(cs.Site("m0"), mode="zero"),
    ]
    with pytest.raises(RuntimeError, match="boom"), apply(model, ivs):
        assert not no_hooks(model)
        model(data.tokens)
        raise RuntimeError("boom")
    assert no_hooks(model)
    assert torch.equal(model(data.tokens).detach(), before)
    for name in CASE_NAMES:
        run(model, data.tokens, cases(model, data)[name][0], positions=data.positions)
    assert no_hooks(model)
    assert torch.equal(model(data.tokens).detach(), before)


def test_failed_compile_installs_nothing(model, data):
    with pytest.raises(ShapeMismatchError):
        run(model, data.tokens, [cs.Add(cs.Site("a0.h0"), vec(12)), cs.Add(cs.Site("m0"), vec(7))])
    assert no_hooks(model)


def test_forward_failure_inside_hooks_cleans_up(model, data):
    ivs = [cs.Ablate(cs.Site("a0.h0", positions="END"), mode="zero")]
    with pytest.raises(PositionError):  # positions were for 3 examples, the forward has 2
        with apply(model, ivs, positions=data.positions):
            model(data.tokens[:2])
    assert no_hooks(model)


# -- run_variants -----------------------------------------------------------------------------


def test_run_variants_bit_identical_to_separate_runs(model, data):
    s = model.shape
    variants = [
        [],
        [cs.Add(cs.Site("a1.h2", positions="END"), vec(s.d_head), coef=1.0)],
        [cs.Add(cs.Site("a1.h2", positions="END"), vec(s.d_head), coef=-3.0)],
        [cs.Ablate(cs.Site("a0.h3"), mode="resample", reference=data.corrupted)],
        [cs.Ablate(cs.Site("m1", positions="IO"), mode="mean", reference=data.ref_task)],
        [
            cs.Add(cs.Site("a0.h1", to=("a2.h0<q>",)), vec(s.d_head), coef=4.0),
            cs.Scale(cs.Site("resid_mid.1"), 0.9),
        ],
    ]
    stacked = run_variants(
        model, data.tokens, variants, capture=["a2.h0", "m1"], positions=data.positions, max_batch=8
    )
    assert stacked.logits.shape == (len(variants), B, P, model.shape.d_vocab)
    for k, ivs in enumerate(variants):
        logits, cache = run(
            model, data.tokens, ivs, capture=["a2.h0", "m1"], positions=data.positions
        )
        lk, ck = stacked[k]
        assert torch.equal(lk, logits), k
        assert torch.equal(ck["a2.h0"], cache["a2.h0"]) and torch.equal(ck["m1"], cache["m1"])


def test_run_variants_reduce(model, data):
    variants = [[cs.Scale(cs.Site("m0"), f)] for f in (0.0, 1.0, 2.0)]
    out = run_variants(model, data.tokens, variants, reduce=lambda lg: lg[:, -1].max(-1).values)
    assert out.logits.shape == (3, B)
    for k, ivs in enumerate(variants):  # by value: each row is that variant's own run, reduced
        want = run(model, data.tokens, ivs)[0][:, -1].max(-1).values
        torch.testing.assert_close(out.logits[k], want, atol=1e-6, rtol=0)
    assert not torch.allclose(out.logits[0], out.logits[2])  # the variants differ


# -- typed errors -----------------------------------------------------------------------------


def test_wrong_vector_size(model, data):
    with pytest.raises(ShapeMismatchError, match="12 .*d_model=48"):
        run(model, data.tokens, [cs.Add(cs.Site("a0.h0"), vec(13))])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_vector_and_coef(bad):
    v = torch.ones(12)
    v[3] = bad
    with pytest.raises(InterventionError, match="non-finite"):
        cs.Add(cs.Site("a0.h0"), v)
    with pytest.raises(InterventionError, match="coef"):
        cs.Add(cs.Site("a0.h0"), torch.ones(12), coef=bad)


def test_unknown_and_out_of_range_sites(model, data):
    with pytest.raises(NodeNameError):
        cs.Site("head0")
    with pytest.raises(ShapeMismatchError, match="layer 7"):
        run(model, data.tokens, [cs.Ablate(cs.Site("a7.h0"))])
    with pytest.raises(ShapeMismatchError, match="head 9"):
        run(model, data.tokens, [cs.Ablate(cs.Site("a0.h9"))])


def test_undefined_named_position(model, data):
    with pytest.raises(PositionError, match="'S2' is not defined; defined: END, IO"):
        run(
            model,
            data.tokens,
            [cs.Ablate(cs.Site("a0.h0", positions="S2"))],
            positions=data.positions,
        )
    with pytest.raises(PositionError, match="no task"):
        run(model, data.tokens, [cs.Ablate(cs.Site("a0.h0", positions="END"))])


def test_mismatched_reference(model, data):
    with pytest.raises(InterventionError, match="same"):
        run(
            model,
            data.tokens,
            [cs.Ablate(cs.Site("a0.h0"), mode="resample", reference=data.corrupted[:, :5])],
        )
    with pytest.raises(InterventionError, match="same"):
        run(model, data.tokens, [cs.Patch(cs.Site("a0.h0"), torch.zeros(2, P, 12))])


def test_conflicting_interventions(model, data):
    with pytest.raises(InterventionError, match="conflicting"):
        run(
            model,
            data.tokens,
            [cs.Ablate(cs.Site("a0.h0")), cs.Add(cs.Site("a0.h0", positions=2), vec(12))],
        )
    with pytest.raises(InterventionError, match="conflicting"):
        run(model, data.tokens, [cs.Scale(cs.Site("m1"), 2.0), cs.Ablate(cs.Site("m1.n3"))])
    with pytest.raises(InterventionError, match="conflicting"):
        run(
            model,
            data.tokens,
            [cs.Ablate(cs.Site("m0", positions=-1)), cs.Scale(cs.Site("m0", positions=6), 2.0)],
        )
    # adds stack; disjoint positions do not conflict
    run(
        model,
        data.tokens,
        [cs.Add(cs.Site("a0.h0"), vec(12)), cs.Add(cs.Site("a0.h0"), vec(12, 1))],
    )
    run(
        model,
        data.tokens,
        [cs.Ablate(cs.Site("a0.h0", positions=1)), cs.Scale(cs.Site("a0.h0", positions=2), 2.0)],
    )


def test_bad_receivers(model, data):
    with pytest.raises(InterventionError, match="not downstream"):
        run(model, data.tokens, [cs.Add(cs.Site("a1.h0", to=("a0.h1",)), vec(12))])
    with pytest.raises(InterventionError):
        cs.Site("resid_pre.1", to=("a2.h0",))
    with pytest.raises(InterventionError):
        cs.Site("m1", channel="q")


def test_many_head_edits_fused_equal_hand_computed(model, data):
    """All heads of every layer at END (zero / add / scale mixed): fused into one op per layer."""
    s = model.shape
    end = data.positions["END"]
    ivs, plan = [], {}
    for L in range(s.n_layers):
        for h in range(s.n_heads):
            kind = (L + h) % 3
            site = cs.Site(f"a{L}.h{h}", positions="END")
            if kind == 0:
                ivs.append(cs.Ablate(site, mode="zero"))
            elif kind == 1:
                ivs.append(cs.Add(site, vec(s.d_head, L * 10 + h), coef=0.7))
            else:
                ivs.append(cs.Scale(site, 1.5))
            plan[(L, h)] = kind

    def edit(point, layer, head, channel, t):
        if point != "z":
            return t
        t = t.clone()
        r = torch.arange(B)
        kind = plan[(layer, head)]
        if kind == 0:
            t[r, end] = 0.0
        elif kind == 1:
            t[r, end] += 0.7 * vec(s.d_head, layer * 10 + head)
        else:
            t[r, end] *= 1.5
        return t

    logits, _ = run(model, data.tokens, ivs, positions=data.positions)
    torch.testing.assert_close(logits, ref.forward(model, data.tokens, edit), atol=2e-5, rtol=0)


def test_run_variants_chunks_with_different_reference_sites(model, data):
    """Each chunk may want other sites from the same reference batch (captured on demand)."""
    heads = [f"a{L}.h{h}" for L in range(3) for h in range(4)]
    variants = [[cs.Ablate(cs.Site(h), mode="resample", reference=data.corrupted)] for h in heads]
    stacked = run_variants(model, data.tokens, variants, max_batch=2 * B)
    for k, ivs in enumerate(variants):
        assert torch.equal(stacked.logits[k], run(model, data.tokens, ivs)[0]), heads[k]


def test_gradients_flow_through_every_kind_of_edit(model, data):
    """run(grad=True) builds a graph (EAP-style attribution needs it): no in-place errors from the
    hooks' writes, and a finite gradient that the interventions change."""
    s = model.shape
    D = vec(s.d_model, 5)
    ivs = [
        cs.ProjectOut(cs.Site("resid_post.0"), D),
        cs.ProjectOut(cs.Site("a1.h1"), vec(s.d_head, 3)),
        cs.ProjectOut(cs.Site("a0.h2", positions=[1, 2]), D, space="resid"),
        cs.Scale(cs.Site("m1", positions="END"), 0.5),
        cs.Add(cs.Site("a0.h1", to=("a2.h0<q>", "m1")), vec(s.d_head, 7), coef=2.0),
        cs.ProjectOut(cs.Site("a2.h3", channel="k"), D),
        cs.Ablate(
            cs.Site("resid_mid.1", positions="END"), mode="resample", reference=data.corrupted
        ),
    ]
    wte = model.hf.transformer.wte.weight
    logits, _ = run(model, data.tokens, ivs, positions=data.positions, grad=True)
    (g,) = torch.autograd.grad(logits[:, -1, 3].sum(), wte)
    clean, _ = run(model, data.tokens, [], grad=True)
    (g0,) = torch.autograd.grad(clean[:, -1, 3].sum(), wte)
    assert torch.isfinite(g).all() and g.abs().sum() > 0 and not torch.allclose(g, g0)
