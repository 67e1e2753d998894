"""Property test: a random intervention at a random site and positions equals the same change
made by hand in the independent reference forward."""

from __future__ import annotations

import gpt2_reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import circuitsteer as cs

MODEL = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16, d_mlp=32, seed=4, d_vocab=257)
S = MODEL.shape
B, P = 2, 5
TOKENS = torch.randint(0, 256, (B, P), generator=torch.Generator().manual_seed(1))
CORRUPTED = torch.randint(0, 256, (B, P), generator=torch.Generator().manual_seed(2))
REC_CORR: dict = {}
ref.forward(MODEL, CORRUPTED, record=REC_CORR)

# (site node, channel, space, reference point, width)
SITES = (
    [(f"a{L}.h{h}", None, "z", ("z", L, h, None), S.d_head) for L in range(2) for h in range(2)]
    + [
        (f"a{L}.h{h}", c, None, ("qkv_in", L, h, c), S.d_model)
        for L in range(2)
        for h in range(2)
        for c in "qkv"
    ]
    + [(f"m{L}", None, "out", ("mlp_out", L, None, None), S.d_model) for L in range(2)]
    + [(f"m{L}", None, "neurons", ("neurons", L, None, None), S.d_mlp) for L in range(2)]
    + [
        (f"{k}.{L}", None, None, (k, L, None, None), S.d_model)
        for k in ("resid_pre", "resid_mid", "resid_post")
        for L in range(2)
    ]
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    site=st.sampled_from(SITES),
    op=st.sampled_from(["add", "zero", "scale", "project", "resample"]),
    positions=st.one_of(
        st.just("all"), st.lists(st.integers(0, P - 1), min_size=1, max_size=3, unique=True)
    ),
    seed=st.integers(0, 10_000),
)
def test_random_intervention_equals_hand_computed(site, op, positions, seed):
    node, channel, space, point, width = site
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(width, generator=g)
    pos = positions if positions == "all" else sorted(positions)
    s = cs.Site(node, positions=pos if pos == "all" else list(pos), channel=channel)
    idx = (slice(None), slice(None) if pos == "all" else pos)
    if op == "add":
        iv = cs.Add(s, v, coef=1.7, space=space if space in ("neurons",) else None)
        change = lambda t: t + 1.7 * v  # noqa: E731
    elif op == "zero":
        iv = cs.Ablate(s, mode="zero")
        change = lambda t: torch.zeros_like(t)  # noqa: E731
    elif op == "scale":
        iv = cs.Scale(s, -0.6)
        change = lambda t: t * -0.6  # noqa: E731
    elif op == "project":
        iv = cs.ProjectOut(s, v, space=space if space == "neurons" else None)
        d = v / v.norm()
        change = lambda t: t - (t @ d)[..., None] * d  # noqa: E731
    else:
        iv = cs.Ablate(s, mode="resample", reference=CORRUPTED)
        key = point if point[0] == "qkv_in" else point[:3] if point[0] == "z" else point[:2]
        corr = REC_CORR[key]
        change = lambda t: corr[idx]  # noqa: E731
    if space == "neurons" and op in ("zero", "scale", "resample") and node.startswith("m"):
        return  # Scale/Ablate on an MLP act on its output; neuron-space ops are covered by add/project

    def edit(p, layer, head, ch, t):
        key = (p, layer, head, ch) if p in ("qkv_in", "z") else (p, layer, None, None)
        if key != point:
            return t
        t = t.clone()
        t[idx] = change(t[idx]) if op != "resample" else change(None)
        return t

    expected = ref.forward(MODEL, TOKENS, edit)
    logits, _ = cs.engine.run(MODEL, TOKENS, [iv])
    torch.testing.assert_close(logits, expected, atol=3e-5, rtol=0)
