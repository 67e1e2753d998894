"""Dense edge masks: all zeros = clean (exactly), all ones = corrupted, one edge = the engine's
edge-restricted Patch, gradients = finite differences, Circuit <-> mask, on every family the
masks support."""

from __future__ import annotations

import pytest
import torch
from perturbed import builder, model_fixture

import circuitsteer as cs
from circuitsteer.engine import run
from circuitsteer.engine.masks import EdgeMask, run_with_mask, sender_outputs

P = 6
FAMILIES = {
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {"rotary_pct": 0.5}),  # parallel residual
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "llama": ("llama", {}),
}


build = builder(FAMILIES)
model = model_fixture(FAMILIES)


@pytest.fixture(scope="module")
def toks():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, P), generator=g), torch.randint(0, 256, (2, P), generator=g)


def test_edge_count(model):
    assert EdgeMask(model).n_edges == cs.edge_graph.count_full_edges(model.shape)


def test_zeros_clean_ones_corrupted(model, toks):
    clean, corrupt = toks
    with torch.no_grad():
        want_clean, want_corrupt = model(clean), model(corrupt)
    assert torch.equal(run_with_mask(model, clean, EdgeMask(model), corrupt), want_clean)
    ones = run_with_mask(model, clean, EdgeMask(model, value=1.0), sender_outputs(model, corrupt))
    torch.testing.assert_close(ones, want_corrupt, atol=1e-4, rtol=1e-4)


def one_edge_cases(model):
    s = model.shape
    L = s.n_layers - 1
    mlp_src = "m0"
    cases = [
        ("a0.h1", f"a{L}.h2", "q"),
        ("a0.h1", f"a{L}.h0", "k"),
        ("input", "a1.h3", "v"),
        (mlp_src, "logits", None),
        ("a1.h2", "logits", None),
        ("input", "m1", None),
    ]
    if not s.parallel_residual:
        cases.append(("a1.h0", "m1", None))  # a layer's heads feed its MLP (sequential only)
    return cases


def test_one_edge_equals_edge_restricted_patch(model, toks):
    clean, corrupt = toks
    ref = sender_outputs(model, corrupt)
    for src, dst, ch in one_edge_cases(model):
        mask = EdgeMask(model)
        mask[src, dst, ch] = 1.0
        got = run_with_mask(model, clean, mask, ref)
        _, cache = run(model, corrupt, [], capture=[src])
        recv = dst if ch is None else f"{dst}<{ch}>"
        want, _ = run(model, clean, [cs.Patch(cs.Site(src, to=(recv,)), cache)])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{src}->{recv}")
        assert not torch.allclose(got, want + 1.0)


def test_parallel_residual_edge_rule(toks):
    m = build("gpt_neox")
    mask = EdgeMask(m)
    with pytest.raises(cs.InterventionError, match="no edge"):
        mask["a1.h0", "m1", None] = 1.0
    with pytest.raises(cs.InterventionError, match="channel"):
        mask["a0.h0", "a1.h0", None] = 1.0


GQA = {"llama": {}, "qwen2": {}}  # qwen2: q/k/v bias


def build_gqa(family, dtype=torch.float32):
    m = cs.models.random_model(family, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=3)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    m.hf.to(dtype)
    return m


GQA_EDGES = [
    ("a0.h1", "a1.h2", "k"),  # a1.h2 shares its KV head with a1.h3
    ("input", "a1.h3", "v"),
    ("a0.h0", "a1.h0", "k"),
    ("m0", "a1.h1", "v"),
    ("a0.h2", "a1.h2", "q"),
    ("input", "a0.h1", "k"),
]


@pytest.mark.parametrize("family", list(GQA))
def test_grouped_query_attention(family, toks):
    m = build_gqa(family)
    assert m.shape.grouped_kv
    clean, corrupt = toks
    ref = sender_outputs(m, corrupt)
    with torch.no_grad():
        want_clean, want_corrupt = m(clean), m(corrupt)
    assert torch.equal(run_with_mask(m, clean, EdgeMask(m), ref), want_clean)
    ones = run_with_mask(m, clean, EdgeMask(m, value=1.0), ref)
    torch.testing.assert_close(ones, want_corrupt, atol=1e-5, rtol=1e-5)
    for src, dst, ch in GQA_EDGES:
        mask = EdgeMask(m)
        mask[src, dst, ch] = 1.0
        got = run_with_mask(m, clean, mask, ref)
        _, cache = run(m, corrupt, [], capture=[src])
        want, _ = run(m, clean, [cs.Patch(cs.Site(src, to=(f"{dst}<{ch}>",)), cache)])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{src}->{dst}<{ch}>")
        assert not torch.allclose(got, want_clean, atol=1e-5), f"{src}->{dst}<{ch}> had no effect"


def _rms_norm_float64(self, x):
    """LlamaRMSNorm without its float32 cast (which would swamp float64 finite differences)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def test_grouped_query_attention_gradients(toks, monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setattr(LlamaRMSNorm, "forward", _rms_norm_float64)
    m = build_gqa("llama", torch.float64)
    clean, corrupt = toks
    ref = sender_outputs(m, corrupt)
    mask = EdgeMask(m, value=0.3, requires_grad=True)

    def metric(lg):
        return lg[:, -1, 5].sum() - lg[:, 2, 9].sum()

    grads = torch.autograd.grad(metric(run_with_mask(m, clean, mask, ref)), mask.parameters())
    g = dict(zip(mask.tensors, grads, strict=True))
    eps = 1e-5
    # every head of every layer is recomputed here (the mask requires grad, or is nonzero), so
    # no float32 softmax of the model's own attention enters the logits
    for edge in GQA_EDGES:
        key_, row, col = mask.locate(edge)
        f = []
        for sign in (1, -1):
            mask[edge] = 0.3 + sign * eps
            with torch.no_grad():
                f.append(metric(run_with_mask(m, clean, mask, ref)).item())
        mask[edge] = 0.3
        fd = (f[0] - f[1]) / (2 * eps)
        assert abs(fd - g[key_][row, col].item()) < 1e-5 * max(1.0, abs(fd)), (edge, fd)


@pytest.mark.parametrize("key", ["gpt2", "gpt_neox"])
def test_mask_gradients_match_finite_differences(key, toks):
    m = build(key, torch.float64)
    clean, corrupt = toks
    ref = sender_outputs(m, corrupt)
    mask = EdgeMask(m, value=0.3, requires_grad=True)

    def metric(lg):
        return lg[:, -1, 5].sum() - lg[:, 2, 9].sum()

    grads = torch.autograd.grad(metric(run_with_mask(m, clean, mask, ref)), mask.parameters())
    g = dict(zip(mask.tensors, grads, strict=True))
    # GPT-NeoX's attention takes its softmax and rotary angles in float32: larger steps there
    eps, tol = (1e-5, 1e-6) if key == "gpt2" else (1e-3, 1e-3)
    for edge in one_edge_cases(m):
        key_, row, col = mask.locate(edge)
        f = []
        for sign in (1, -1):
            mask[edge] = 0.3 + sign * eps
            with torch.no_grad():
                f.append(metric(run_with_mask(m, clean, mask, ref)).item())
        mask[edge] = 0.3
        fd = (f[0] - f[1]) / (2 * eps)
        assert abs(fd - g[key_][row, col].item()) < tol * max(1.0, abs(fd)), edge


def test_circuit_round_trip(toks):
    m = build("gpt2")
    s = m.shape
    full = cs.full_edge_graph(s)
    assert len(EdgeMask.from_circuit(m, full).to_circuit().edges) == len(full.edges)
    c = cs.Circuit("small", shape=s)
    for n in ("input", "a0.h1", "a2.h3", "m1", "logits"):
        c.add_node(n)
    for e in [("input", "a0.h1", "q"), ("a0.h1", "a2.h3", "k"), ("a2.h3", "logits", None)]:
        c.add_edge(*e[:2], channel=e[2])
    mask = EdgeMask.from_circuit(m, c)
    assert float(mask["a0.h1", "a2.h3", "k"]) == 0.0 and float(mask["m1", "logits", None]) == 1.0
    back = mask.to_circuit()
    assert back.edge_keys() == c.edge_keys()
    # running the circuit = patching every edge outside it
    logits = run_with_mask(m, toks[0], mask, toks[1])
    assert torch.isfinite(logits).all()
