"""The engine on every supported family (tiny random models built from configs), against the
independent reference forward of ``arch_reference.py``: no intervention equals Hugging Face,
node-level head/MLP/residual operations, captures, and edge-restricted q/k/v changes, including
under grouped-query attention (a change to one query head's k or v reaches that head only)."""

from __future__ import annotations

import arch_reference as ref
import pytest
import torch
from perturbed import builder, model_fixture

import circuitsteer as cs
from circuitsteer.engine import run, run_variants
from circuitsteer.errors import InterventionError, NodeNameError, ShapeMismatchError

B, P = 2, 6
FAMILIES = {
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {"rotary_pct": 0.5}),  # parallel residual, partial rotary
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False, "rotary_pct": 1.0}),
    "llama": ("llama", {}),
    "llama-gqa": ("llama", {"n_kv_heads": 2}),
    "qwen2-gqa": ("qwen2", {"n_kv_heads": 2}),  # q/k/v bias
    "mistral-mqa": ("mistral", {"n_kv_heads": 1}),
}


build = builder(FAMILIES)
model = model_fixture(FAMILIES)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (B, P), generator=g),
        torch.randint(0, 256, (B, P), generator=g),
        {"END": torch.tensor([5, 3])},
    )


def vec(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def edit_at(targets: dict):
    """Reference edit: ``targets[(point, layer, head, channel)] = fn(t)``."""

    def edit(point, layer, head, channel, t):
        fn = targets.get((point, layer, head, channel))
        return t if fn is None else fn(t)

    return edit


def at_positions(pos, fn):
    def f(t):
        t = t.clone()
        t[:, pos] = fn(t[:, pos])
        return t

    return f


def at_end(end, fn):
    r = torch.arange(B)

    def f(t):
        t = t.clone()
        t[r, end] = fn(t[r, end])
        return t

    return f


def check(model, tokens, ivs, edit, positions=None, atol=5e-5):
    expected = ref.forward(model, tokens, edit)
    logits, _ = run(model, tokens, ivs, positions=positions)
    torch.testing.assert_close(logits, expected, atol=atol, rtol=0)
    assert (expected - ref.forward(model, tokens)).abs().max() > 1e-4, (
        "the case must change the output"
    )


def test_no_intervention_equals_hf_and_reference(model, data):
    tokens = data[0]
    logits, cache = run(model, tokens, [])
    with torch.no_grad():
        raw = model.hf(input_ids=tokens, use_cache=False).logits
    assert torch.equal(logits, raw) and cache == {}
    torch.testing.assert_close(ref.forward(model, tokens), raw, atol=5e-5, rtol=0)


def node_cases(model, data):
    s = model.shape
    tokens, corrupted, positions = data
    end = positions["END"]
    v_dh, v_d, v_mlp = vec(s.d_head, 1), vec(s.d_model, 2), vec(s.d_mlp, 3)
    corr = {}
    ref.forward(model, corrupted, record=corr)
    D = vec(s.d_model, 5)
    Dn = D / D.norm()
    cases = {
        "add z": (
            [cs.Add(cs.Site("a1.h2", positions=[2, 4]), v_dh, coef=2.0)],
            {("z", 1, 2, None): at_positions([2, 4], lambda t: t + 2.0 * v_dh)},
        ),
        "zero head at END": (
            [cs.Ablate(cs.Site("a0.h3", positions="END"))],
            {("z", 0, 3, None): at_end(end, torch.zeros_like)},
        ),
        "scale head": (
            [cs.Scale(cs.Site("a2.h1"), 0.3)],
            {("z", 2, 1, None): lambda t: 0.3 * t},
        ),
        "add head result": (
            [cs.Add(cs.Site("a1.h0"), v_d, space="resid")],
            {("head_resid", 1, 0, None): lambda t: t + v_d},
        ),
        "resample head": (
            [cs.Ablate(cs.Site("a1.h1"), mode="resample", reference=corrupted)],
            {("z", 1, 1, None): lambda t: corr[("z", 1, 1)]},
        ),
        "q input": (
            [cs.Add(cs.Site("a1.h1", channel="q"), v_d, coef=3.0)],
            {("qkv_in", 1, 1, "q"): lambda t: t + 3.0 * v_d},
        ),
        "k input of one query head": (
            [cs.Add(cs.Site("a1.h1", channel="k", positions="END"), v_d, coef=3.0)],
            {("qkv_in", 1, 1, "k"): at_end(end, lambda t: t + 3.0 * v_d)},
        ),
        "v input of one query head": (
            [cs.ProjectOut(cs.Site("a2.h2", channel="v"), D)],
            {("qkv_in", 2, 2, "v"): lambda t: t - (t @ Dn)[..., None] * Dn},
        ),
        "k and v of two heads of one group": (
            [
                cs.Add(cs.Site("a1.h0", channel="k"), v_d, coef=2.0),
                cs.Scale(cs.Site("a1.h1", channel="v"), 0.5),
            ],
            {
                ("qkv_in", 1, 0, "k"): lambda t: t + 2.0 * v_d,
                ("qkv_in", 1, 1, "v"): lambda t: 0.5 * t,
            },
        ),
        "mlp out": ([cs.Add(cs.Site("m1"), v_d)], {("mlp_out", 1, None, None): lambda t: t + v_d}),
        "mlp neurons": (
            [cs.Add(cs.Site("m0", positions=3), v_mlp, space="neurons")],
            {("neurons", 0, None, None): at_positions([3], lambda t: t + v_mlp)},
        ),
        "one neuron": (
            [cs.Scale(cs.Site("m2.n5"), 3.0)],
            {
                ("neurons", 2, None, None): lambda t: torch.cat(
                    (t[..., :5], 3 * t[..., 5:6], t[..., 6:]), -1
                )
            },
        ),
        "zero mlp": ([cs.Ablate(cs.Site("m2"))], {("mlp_out", 2, None, None): torch.zeros_like}),
        "resid_pre": (
            [cs.Add(cs.Site("resid_pre.1", positions="END"), v_d)],
            {("resid_pre", 1, None, None): at_end(end, lambda t: t + v_d)},
        ),
        "resid_post": (
            [cs.ProjectOut(cs.Site("resid_post.0"), D)],
            {("resid_post", 0, None, None): lambda t: t - (t @ Dn)[..., None] * Dn},
        ),
        "input": (
            [cs.Add(cs.Site("input", positions=0), v_d)],
            {("resid_pre", 0, None, None): at_positions([0], lambda t: t + v_d)},
        ),
    }
    if not s.parallel_residual:
        cases["resid_mid"] = (
            [cs.Add(cs.Site("resid_mid.1"), v_d, coef=0.5)],
            {("resid_mid", 1, None, None): lambda t: t + 0.5 * v_d},
        )
    return cases


NODE_CASES = [
    "add z",
    "zero head at END",
    "scale head",
    "add head result",
    "resample head",
    "q input",
    "k input of one query head",
    "v input of one query head",
    "k and v of two heads of one group",
    "mlp out",
    "mlp neurons",
    "one neuron",
    "zero mlp",
    "resid_pre",
    "resid_post",
    "input",
    "resid_mid",
]


@pytest.mark.parametrize("name", NODE_CASES)
def test_node_level_operations_equal_reference(model, data, name):
    cases = node_cases(model, data)
    if name not in cases:
        pytest.skip(f"{name} does not exist in {model.shape.describe()}")
    ivs, targets = cases[name]
    check(model, data[0], ivs, edit_at(targets), positions=data[2])


def test_captures_equal_reference_records(model, data):
    s = model.shape
    tokens = data[0]
    v = vec(s.d_model, 9)
    ivs = [cs.Add(cs.Site("a1.h1", channel="k"), v, coef=2.0)]  # a recomputed head under GQA
    rec = {}
    expected = ref.forward(
        model, tokens, edit_at({("qkv_in", 1, 1, "k"): lambda t: t + 2 * v}), record=rec
    )
    names = {
        "a1.h1": rec[("z", 1, 1)],
        "a1.h0": rec[("z", 1, 0)],
        "a1.h1:pattern": rec[("pattern", 1, 1)],
        "a1.h0:pattern": rec[("pattern", 1, 0)],
        "a1.h1<k>": rec[("qkv_in", 1, 1, "k")],
        "a1.h0<k>": rec[("qkv_in", 1, 0, "k")],
        "a2.h3:result": rec[("head_resid", 2, 3)],
        "m1": rec[("mlp_out", 1)],
        "m1:in": rec[("mlp_in", 1)],
        "m0:neurons": rec[("neurons", 0)],
        "m2.n4": rec[("neurons", 2)][..., 4:5],
        "resid_pre.2": rec[("resid_pre", 2)],
        "resid_post.1": rec[("resid_post", 1)],
        "input": rec[("resid_pre", 0)],
        "logits:in": rec[("logits_in", -1)],
    }
    if not s.parallel_residual:
        names["resid_mid.0"] = rec[("resid_mid", 0)]
    logits, cache = run(model, tokens, ivs, capture=list(names))
    torch.testing.assert_close(logits, expected, atol=5e-5, rtol=0)
    for n, t in names.items():
        torch.testing.assert_close(cache[n], t, atol=5e-5, rtol=0, msg=n)


# -- edges ------------------------------------------------------------------------------------


def head_delta(model, layer, head, v):
    """A z-space change of a head as a d_model delta: ``v @ W_O_h`` (from the reference weights)."""
    blocks, *_ = ref.layers(model, P)
    dh = model.shape.d_head
    return v @ blocks[layer].W_O[head * dh : (head + 1) * dh]


def test_edge_restricted_qkv_equals_per_receiver_computation(model, data):
    """One sender's change reaches exactly the named receivers: one query head's k (under GQA
    its group mates read clean k), another's v and q, and an MLP."""
    s = model.shape
    tokens, _, positions = data
    v = vec(s.d_head, 7)
    delta = head_delta(model, 0, 2, 2.0 * v)
    receivers = ("a1.h1<k>", "a2.h0<v>", "a2.h3<q>", "m2")
    ivs = [cs.Add(cs.Site("a0.h2", to=receivers), v, coef=2.0)]
    targets = {
        ("qkv_in", 1, 1, "k"): lambda t: t + delta,
        ("qkv_in", 2, 0, "v"): lambda t: t + delta,
        ("qkv_in", 2, 3, "q"): lambda t: t + delta,
        ("mlp_in", 2, None, None): lambda t: t + delta,
    }
    check(model, tokens, ivs, edit_at(targets), positions=positions)


def test_edge_resample_into_all_channels_of_one_head(model, data):
    tokens, corrupted, positions = data
    clean, corr = {}, {}
    ref.forward(model, tokens, record=clean)
    ref.forward(model, corrupted, record=corr)
    blocks, *_ = ref.layers(model, P)
    dh = model.shape.d_head
    delta = (corr[("z", 0, 1)] - clean[("z", 0, 1)]) @ blocks[0].W_O[dh : 2 * dh]
    mask = torch.zeros(B, P, 1)
    mask[torch.arange(B), positions["END"]] = 1.0
    targets = {("qkv_in", 2, 2, c): (lambda t: t + delta * mask) for c in "qkv"}
    ivs = [
        cs.Ablate(
            cs.Site("a0.h1", positions="END", to=("a2.h2",)), mode="resample", reference=corrupted
        )
    ]
    check(model, tokens, ivs, edit_at(targets), positions=positions)


def test_edges_from_input_and_mlp(model, data):
    s = model.shape
    tokens = data[0]
    v = vec(s.d_model, 11)
    ivs = [
        cs.Add(cs.Site("input", positions=2, to=("a1.h3<v>", "a0.h0<k>")), v),
        cs.Add(cs.Site("m0", to=("logits", "a2.h1<k>")), v, coef=0.5),
    ]

    def add_at_2(t):
        t = t.clone()
        t[:, 2] += v
        return t

    targets = {
        ("qkv_in", 1, 3, "v"): add_at_2,
        ("qkv_in", 0, 0, "k"): add_at_2,
        ("logits_in", -1, None, None): lambda t: t + 0.5 * v,
        ("qkv_in", 2, 1, "k"): lambda t: t + 0.5 * v,
    }
    check(model, tokens, ivs, edit_at(targets))


def test_group_mates_read_clean_kv_bit_for_bit(model, data):
    """Under GQA, an edge into one query head's k/v leaves every other head's z untouched."""
    s = model.shape
    tokens = data[0]
    others = [f"a1.h{h}" for h in range(s.n_heads) if h != 1]
    _, clean = run(model, tokens, [], capture=[*others, "a1.h1"])
    ivs = [cs.Add(cs.Site("a0.h0", to=("a1.h1<k>", "a1.h1<v>")), vec(s.d_head, 3), coef=4.0)]
    _, steered = run(model, tokens, ivs, capture=[*others, "a1.h1"])
    assert not torch.equal(steered["a1.h1"], clean["a1.h1"])
    for name in others:
        assert torch.equal(steered[name], clean[name]), name


def test_run_variants_bit_identical(model, data):
    s = model.shape
    tokens, corrupted, positions = data
    variants = [
        [],
        [cs.Add(cs.Site("a1.h1", channel="k"), vec(s.d_model, 1))],
        [cs.Add(cs.Site("a0.h2", to=("a1.h3<v>", "m2")), vec(s.d_head, 2), coef=3.0)],
        [cs.Ablate(cs.Site("a2.h0", positions="END"), mode="resample", reference=corrupted)],
        [cs.Scale(cs.Site("m1"), 0.5), cs.Ablate(cs.Site("a1.h2"))],
    ]
    stacked = run_variants(
        model, tokens, variants, capture=["a1.h1"], positions=positions, max_batch=4
    )
    for k, ivs in enumerate(variants):
        logits, cache = run(model, tokens, ivs, capture=["a1.h1"], positions=positions)
        assert torch.equal(stacked[k][0], logits), k
        assert torch.equal(stacked[k][1]["a1.h1"], cache["a1.h1"]), k


def test_gradients_through_recomputed_heads(model, data):
    s = model.shape
    tokens = data[0]
    ivs = [
        cs.Add(cs.Site("a0.h1", to=("a1.h2<k>", "a2.h0<v>")), vec(s.d_head, 4), coef=2.0),
        cs.ProjectOut(cs.Site("a2.h3", channel="k"), vec(s.d_model, 6)),
    ]
    emb = model.hf.get_input_embeddings().weight
    logits, _ = run(model, tokens, ivs, grad=True)
    (g,) = torch.autograd.grad(logits[:, -1, 3].sum(), emb)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# -- architecture rules -------------------------------------------------------------------------


def test_parallel_residual_sites_and_edges():
    model = build("gpt_neox")
    tokens = torch.randint(0, 256, (1, 4))
    assert model.shape.parallel_residual
    with pytest.raises(ShapeMismatchError, match="parallel residual"):
        run(model, tokens, [cs.Add(cs.Site("resid_mid.0"), vec(32))])
    with pytest.raises(ShapeMismatchError, match="parallel residual"):
        run(model, tokens, [], capture=["resid_mid.1"])
    with pytest.raises(InterventionError, match="not downstream"):
        run(model, tokens, [cs.Add(cs.Site("a1.h0", to=("m1",)), vec(8))])
    run(model, tokens, [cs.Add(cs.Site("m1", to=("a2.h0<q>",)), vec(32))])  # MLP L feeds layer L+1
    with pytest.raises(NodeNameError, match="parallel residual"):
        cs.nodes.parse_edge("a1.h0->m1", model.shape)
    assert cs.nodes.parse_edge("a1.h0->m1").name == "a1.h0->m1"  # sequential: allowed


def test_parallel_mlp_reads_layer_input_not_heads():
    """Zeroing every head of layer 1 leaves MLP 1's input unchanged under a parallel residual."""
    model = build("gpt_neox")
    tokens = torch.randint(0, 256, (2, 5))
    _, clean = run(model, tokens, [], capture=["m1:in", "resid_pre.1"])
    heads = [cs.Ablate(cs.Site(f"a1.h{h}")) for h in range(4)]
    _, ablated = run(model, tokens, heads, capture=["m1:in", "resid_post.1"])
    assert torch.equal(clean["m1:in"], ablated["m1:in"])
    assert torch.equal(clean["m1:in"], clean["resid_pre.1"])


def test_grouped_query_shape():
    model = build("llama-gqa")
    s = model.shape
    assert (s.n_heads, s.kv_heads, s.grouped_kv) == (4, 2, True)
    assert [s.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    assert model.arch.qkv_cols("k", 3) == slice(8, 16) and model.arch.qkv_cols("q", 3) == slice(
        24, 32
    )


@pytest.mark.parametrize("key", ["gpt2", "llama-gqa"])
def test_gradient_at_captured_head_inputs_under_shared_edge_changes(key, data):
    """A captured q/k/v input is the head's own: when one edge change reaches several receivers
    (they share one effective input), the gradient at one head's input counts that head's path
    only. Checked, with and without a no-op patch from the input to every q/k/v receiver of
    layers 1-2, against the gradient of a zero vector added at that head's channel (summed over
    rows and positions) and against finite differences (float64)."""
    model = build(key)
    model.hf.double()
    tokens = data[0]
    _, clean = run(model, tokens, capture=["input"])
    receivers = tuple(f"a{L}.h{h}<{c}>" for L in (1, 2) for h in range(4) for c in "qkv")
    noop = [cs.Patch(cs.Site("input", to=receivers), clean["input"])]
    D = vec(model.shape.d_model, 9).double()  # added at every position

    def f(logits):
        return logits[:, -1, 3].sum()

    for ivs in ([], noop):
        for name in ("a1.h0<q>", "a1.h2<k>", "a2.h1<v>"):
            logits, cache = run(model, tokens, ivs, capture=[name], grad=True)
            (g,) = torch.autograd.grad(f(logits), cache[name])
            site = cs.Site(name[:-3], channel=name[-2])
            zero = torch.zeros_like(D, requires_grad=True)
            logits, _ = run(model, tokens, [*ivs, cs.Add(site, zero)], grad=True)
            (gv,) = torch.autograd.grad(f(logits), zero)
            assert torch.allclose(g.sum((0, 1)), gv, rtol=1e-9, atol=1e-12), (ivs != [], name)
            eps = 1e-3  # attention softmax runs in float32 as in Hugging Face: no smaller eps
            up, _ = run(model, tokens, [*ivs, cs.Add(site, D, coef=eps)])
            dn, _ = run(model, tokens, [*ivs, cs.Add(site, D, coef=-eps)])
            fd = (f(up) - f(dn)) / (2 * eps)
            assert torch.allclose((g * D).sum(), fd, rtol=1e-2, atol=1e-5), (ivs != [], name)


@pytest.mark.parametrize("key", ["gpt2", "gpt_neox", "llama-gqa"])
def test_gradient_at_a_captured_mlp_input_is_the_mlps_own(key, data):
    """``m1:in`` under grad is the MLP's own input (not the residual stream it was read from), with
    or without an edge delta into it: its gradient equals that of a zero vector sent from the
    input to ``m1`` only, summed over rows and positions."""
    model = build(key)
    model.hf.double()
    tokens = data[0]
    _, clean = run(model, tokens, capture=["input"])
    # an edge delta into m1 from another sender (a0.h1: same site would conflict with the Add)
    _, c0 = run(model, tokens, capture=["a0.h1"])
    noop = [cs.Patch(cs.Site("a0.h1", to=("m1", "a1.h0<q>")), c0["a0.h1"])]

    def f(logits):
        return logits[:, -1, 3].sum()

    for ivs in ([], noop):
        logits, cache = run(model, tokens, ivs, capture=["m1:in"], grad=True)
        (g,) = torch.autograd.grad(f(logits), cache["m1:in"])
        zero = torch.zeros(model.shape.d_model, dtype=torch.float64, requires_grad=True)
        logits, _ = run(
            model, tokens, [*ivs, cs.Add(cs.Site("input", to=("m1",)), zero)], grad=True
        )
        (gv,) = torch.autograd.grad(f(logits), zero)
        assert torch.allclose(g.sum((0, 1)), gv, rtol=1e-9, atol=1e-12), ivs != []
