"""Chunked forwards (prompt batches split under a row/memory budget, equal to one forward),
progress bars, and gradients through runs and captures (against finite differences and autograd
through the independent reference forward)."""

from __future__ import annotations

from types import SimpleNamespace

import arch_reference as aref
import gpt2_reference as ref
import pytest
import torch

import circuitsteer as cs
from circuitsteer.engine import chunking, run, run_variants

B, P = 5, 6


@pytest.fixture(scope="module")
def model():
    return cs.random_gpt2(n_layers=3, n_heads=4, d_model=48, d_mlp=96, seed=1)


@pytest.fixture(scope="module")
def model64():
    m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32, seed=3)
    m.hf.double()
    return m


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (B, P), generator=g)
    corrupted = torch.randint(0, 256, (B, P), generator=g)
    ref_tokens = torch.randint(0, 256, (7, P), generator=g)
    task = SimpleNamespace(
        clean=tokens,
        corrupted=corrupted,
        positions={"END": torch.tensor([5, 4, 3, 5, 2]), "IO": torch.tensor([1, 2, 1, 0, 1])},
        lengths=torch.tensor([6, 5, 4, 6, 3]),
    )
    ref_task = SimpleNamespace(
        clean=ref_tokens, positions={"IO": torch.tensor([0, 1, 2, 3, 1, 2, 0])}
    )
    return SimpleNamespace(tokens=tokens, corrupted=corrupted, ref_task=ref_task, task=task)


def vec(n, seed=0, dtype=torch.float32):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dtype)


def interventions(model, data):
    s = model.shape
    _, src = run(model, data.corrupted, [], capture=["a1.h1"])
    return [
        cs.Add(cs.Site("a1.h2", positions="END"), vec(s.d_head), coef=2.0),
        cs.Ablate(cs.Site("a0.h3"), mode="resample", reference=data.corrupted),
        cs.Ablate(cs.Site("m1", positions="IO"), mode="mean", reference=data.ref_task),
        cs.Ablate(cs.Site("m0"), mode="mean", reference=data.task),  # per position, real rows
        cs.Patch(cs.Site("a1.h1", to=("a2.h0<q>", "m2")), src),
        cs.Scale(cs.Site("resid_mid.1"), 0.9),
    ]


@pytest.mark.parametrize("max_batch", [1, 2, 3])
def test_chunked_run_equals_one_forward(model, data, max_batch):
    ivs = interventions(model, data)
    caps = ["a2.h0", "m1", "a2.h0:pattern", "a1.h1<q>"]
    whole, cw = run(model, data.task, ivs, capture=caps)
    parts, cp = run(model, data.task, ivs, capture=caps, max_batch=max_batch, progress=False)
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)
    for n in caps:
        torch.testing.assert_close(cp[n], cw[n], atol=1e-6, rtol=0)


def test_memory_budget_splits_the_batch(model, data, monkeypatch):
    ivs = interventions(model, data)
    one_row = chunking.bytes_per_row(model, P)
    calls = []
    orig = model.hf.forward

    def spy(*a, **k):
        calls.append(k["input_ids"].shape[0])
        return orig(*a, **k)

    whole, _ = run(model, data.task, ivs)
    monkeypatch.setattr(model.hf, "forward", spy)
    parts, _ = run(model, data.task, ivs, max_bytes=2 * one_row)
    monkeypatch.undo()
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)
    assert max(calls) <= 2  # every forward (references too) within the budget
    monkeypatch.setenv("CIRCUITSTEER_MAX_BYTES", str(one_row))
    assert chunking.rows_per_forward(model, P) == 1


def test_bad_budget(model, monkeypatch):
    monkeypatch.setenv("CIRCUITSTEER_MAX_BYTES", "lots")
    with pytest.raises(cs.InterventionError, match="CIRCUITSTEER_MAX_BYTES"):
        chunking.budget()
    with pytest.raises(cs.InterventionError, match="positive"):
        chunking.budget(0)


def test_run_variants_splits_prompts(model, data):
    ivs = interventions(model, data)
    variants = [[], ivs[:1], ivs[1:3], ivs[3:]]
    whole = run_variants(model, data.task, variants, capture=["m1"])
    parts = run_variants(model, data.task, variants, capture=["m1"], max_batch=2, progress=False)
    torch.testing.assert_close(parts.logits, whole.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts.captured["m1"], whole.captured["m1"], atol=1e-6, rtol=0)
    for k, v in enumerate(variants):
        torch.testing.assert_close(whole.logits[k], run(model, data.task, v)[0], atol=1e-6, rtol=0)

    def metric(lg):  # a whole-batch reduce still sees the whole batch
        assert lg.shape[0] == B
        return lg[:, -1, :3].mean()

    red = run_variants(model, data.task, variants, reduce=metric, max_batch=2)
    torch.testing.assert_close(red.logits, whole.logits[:, :, -1, :3].mean((1, 2)))
    rows_seen = []

    def per_row(lg, rows):  # a per-row reduce sees each forward's rows
        rows_seen.append((rows.start, rows.stop))
        return lg[:, -1, 0]

    red2 = run_variants(model, data.task, variants, reduce=per_row, max_batch=2)
    torch.testing.assert_close(red2.logits, whole.logits[:, :, -1, 0], atol=1e-6, rtol=0)
    assert set(rows_seen) == {(0, 2), (2, 4), (4, 5)}


def test_reference_memory_does_not_grow_with_the_batch(model, data, monkeypatch):
    """Resample rows are captured window by window (each row once per call, one window held);
    means are streamed (only the [pos, width] result kept)."""
    from circuitsteer.engine import sources

    ivs = interventions(model, data)[1:4]  # resample + two means
    variants = [ivs, ivs[:1], []]
    whole = run_variants(model, data.task, variants)
    passes, held = [], []
    orig_forward, orig_get = sources.References._forward, sources.References.get

    def spy_forward(self, toks, names):
        passes.append((toks.shape[0], tuple(sorted(names))))
        yield from orig_forward(self, toks, names)

    def spy_get(self, tokens, name, window=None):
        out = orig_get(self, tokens, name, window)
        held.append(sum(v.shape[0] for _, c in self.windows.values() for v in c.values()))
        return out

    monkeypatch.setattr(sources.References, "_forward", spy_forward)
    monkeypatch.setattr(sources.References, "get", spy_get)
    parts = run_variants(model, data.task, variants, max_batch=2, progress=False)
    monkeypatch.undo()
    torch.testing.assert_close(parts.logits, whole.logits, atol=1e-6, rtol=0)
    resample_rows = [n for n, names in passes if names == ("a0.h3",)]
    assert sum(resample_rows) == B  # every resample row captured once, not once per group
    assert max(resample_rows) <= 2 and max(held) <= 2  # one window of a chunk's rows at a time
    mean_passes = [names for _, names in passes if names != ("a0.h3",)]
    assert len(mean_passes) == len(set(mean_passes))  # each mean's reference streamed once


def test_progress_bar_and_quiet(model, data, monkeypatch, capsys):
    items = list(chunking.progress(range(3), 3, "x", enabled=False))
    assert items == [0, 1, 2]
    monkeypatch.setenv("CIRCUITSTEER_QUIET", "1")
    assert chunking.quiet()
    list(chunking.progress(range(3), 3, "x"))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(chunking, "quiet", lambda: False)
    import tqdm.auto

    seen = {}

    def fake(items, **kw):
        seen.update(kw)
        return items

    monkeypatch.setattr(tqdm.auto, "tqdm", fake)
    run(model, data.tokens, [], max_batch=1)
    assert seen["total"] == B and seen["delay"] > 0


# -- gradients ----------------------------------------------------------------------------------


def metric(logits):
    return logits[:, -1, 3].sum() - 0.5 * logits[:, 2, 7].sum()


@pytest.mark.parametrize("name", ["a1.h2", "a0.h1<k>", "m0", "resid_mid.1", "a1.h0:result"])
def test_capture_gradient_matches_finite_differences(model64, name):
    """d metric / d activation from a grad=True capture equals central differences of Adds."""
    m = model64
    s = m.shape
    toks = torch.randint(0, 256, (2, P), generator=torch.Generator().manual_seed(4))
    logits, cache = run(m, toks, [], capture=[name], grad=True)
    if name.endswith(":result"):  # a head's d_model result is computed beside the path
        assert cache[name].requires_grad
        return
    (g,) = torch.autograd.grad(metric(logits), cache[name])
    node, ch = (name.split("<")[0], name[-2]) if "<" in name else (name, None)
    width = s.d_head if node.startswith("a") and ch is None else s.d_model
    eps = 1e-4
    for pos, i in [(2, 0), (P - 1, 3), (2, width - 1)]:
        e = torch.zeros(width, dtype=torch.float64)
        e[i] = 1.0
        f = []
        for sign in (1.0, -1.0):
            iv = cs.Add(cs.Site(node, positions=pos, channel=ch), e, coef=sign * eps)
            with torch.no_grad():
                f.append(metric(run(m, toks, [iv])[0]).item())
        fd = (f[0] - f[1]) / (2 * eps)
        assert abs(fd - g[:, pos, i].sum().item()) < 1e-6 * max(1.0, abs(fd)), (pos, i)


def test_gradient_wrt_steering_vector_equals_reference_autograd(model):
    """Gradient of a metric w.r.t. an Add's vector and a Scale-free edge delta, through the
    engine's hooks and through the hand-written reference forward with autograd on."""
    s = model.shape
    toks = torch.randint(0, 256, (3, P), generator=torch.Generator().manual_seed(1))
    v = vec(s.d_head, 2).requires_grad_(True)
    w = vec(s.d_model, 3).requires_grad_(True)
    ivs = [
        cs.Add(cs.Site("a1.h2", positions=-1), v, coef=1.5),
        cs.Add(cs.Site("a0.h1", to=("a2.h0<q>", "m1")), w, space="resid"),
    ]
    gv, gw = torch.autograd.grad(metric(run(model, toks, ivs, grad=True)[0]), [v, w])

    def edit(point, layer, head, channel, t):
        if (point, layer, head) == ("z", 1, 2):
            t = t.clone()
            t[:, -1] = t[:, -1] + 1.5 * v
        if (point, layer, head, channel) == ("qkv_in", 2, 0, "q") or (point, layer) == (
            "mlp_in",
            1,
        ):
            t = t + w
        return t

    with torch.enable_grad():
        out = ref.forward.__wrapped__(model, toks, edit)  # the reference without its no_grad
    rv, rw = torch.autograd.grad(metric(out), [v, w])
    torch.testing.assert_close(gv, rv, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_gradients_other_families_match_reference(family):
    cfg = {"n_kv_heads": 2} if family == "llama" else {}
    m = cs.models.random_model(family, n_layers=2, n_heads=4, d_model=32, seed=2, **cfg)
    toks = torch.randint(0, 256, (2, P), generator=torch.Generator().manual_seed(1))
    v = vec(m.shape.d_model, 5).requires_grad_(True)
    ivs = [cs.Add(cs.Site("a0.h2", to=("a1.h1<k>",)), v, space="resid")]
    (g,) = torch.autograd.grad(metric(run(m, toks, ivs, grad=True)[0]), [v])

    def edit(point, layer, head, channel, t):
        return t + v if (point, layer, head, channel) == ("qkv_in", 1, 1, "k") else t

    with torch.enable_grad():
        (r,) = torch.autograd.grad(metric(aref.forward.__wrapped__(m, toks, edit)), [v])
    torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_run_variants_grad(model, data):
    s = model.shape
    v = vec(s.d_head, 2).requires_grad_(True)
    variants = [[cs.Add(cs.Site("a1.h2"), v, coef=c)] for c in (1.0, -2.0, 0.5)]
    res = run_variants(model, data.tokens, variants, grad=True, max_batch=2 * B, capture=["m2"])
    (g,) = torch.autograd.grad(torch.stack([metric(lg) for lg in res.logits]).sum(), [v])
    want = sum(
        torch.autograd.grad(metric(run(model, data.tokens, iv, grad=True)[0]), [v])[0]
        for iv in variants
    )
    torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-4)
    assert res.captured["m2"].requires_grad
    plain = run_variants(model, data.tokens, variants)
    assert not plain.logits.requires_grad and not plain.captured


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_run_variants_branches_below_the_first_edit(family, data):
    """The blocks below the first edited layer run once for the prompts, not once per variant;
    results are bit-identical to separate runs (and to the unbranched stacked run)."""
    m = cs.models.random_model(family, n_layers=3, n_heads=4, d_model=32, seed=2)
    variants = [
        [cs.Ablate(cs.Site(f"a{L}.h{h}"), mode="resample", reference=data.corrupted)]
        for L in (1, 2)
        for h in range(4)
    ]
    rows = []
    h = m.module(m.arch.path("block", 0)).register_forward_pre_hook(
        lambda mod, args, kw: rows.append((args[0] if args else kw["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    try:
        res = run_variants(m, data.tokens, variants, capture=["a1.h0"])
    finally:
        h.remove()
    assert rows == [B, B]  # the reference run and the one shared prefix
    plain = run_variants(m, data.tokens, variants, capture=["a1.h0"], branch=False)
    assert torch.equal(res.logits, plain.logits)
    assert torch.equal(res.captured["a1.h0"], plain.captured["a1.h0"])
    for k, ivs in enumerate(variants):
        assert torch.equal(res.logits[k], run(m, data.tokens, ivs)[0]), k
