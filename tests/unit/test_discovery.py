"""Circuit discovery on tiny models: EAP = the mask gradient = finite differences, EAP-IG against
independent computations and exact patching, exact patching against one-edge masks, ACDC's
determinism and its greedy rule re-implemented by hand, a planted ground truth, typed errors."""

from __future__ import annotations

import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer import discovery as dc
from circuitsteer.discovery._common import references
from circuitsteer.discovery._metric import make_metric
from circuitsteer.discovery.eap import captured_receiver_grads, receiver_grads
from circuitsteer.engine.masks import EdgeMask, run_with_mask
from circuitsteer.zoo.tokenizer import toy_tokenizer

torch.set_num_threads(1)


def gpt2(n_layers=2, n_heads=4, d_model=32, seed=0):
    """A GPT-2 at unit weight scale (GPT-2's own init gives effects of ~1e-5), with q/k/v at
    that scale too (``strong_gpt2`` doubles them for sharp attention: first-order methods then
    track exact patching less well, Spearman ~0.8)."""
    m = strong_gpt2(seed=seed, n_layers=n_layers, n_heads=n_heads, d_model=d_model)
    with torch.no_grad():
        for block in m.hf.transformer.h:
            block.attn.c_attn.weight.mul_(0.5)
    return m


@pytest.fixture(scope="module")
def model():
    return gpt2()


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.ioi(model, n=8, seed=0)


def mask_grad(model, task, metric="logit_diff", ablation="resample", positions="all"):
    """The mean loss's gradient w.r.t. a dense mask at zero, as EdgeScores."""
    met = make_metric(metric, model, task)
    refs = references(model, task, ablation, positions)
    mask = EdgeMask(model, requires_grad=True)
    lg = run_with_mask(model, task.clean, mask, refs.ablated)
    g = torch.autograd.grad(met(lg).mean(), mask.parameters())
    return dc.EdgeScores.from_tensors(model.shape, dict(zip(mask.tensors, g, strict=True)), {})


# -- full and empty graphs ------------------------------------------------------------------


def test_full_graph_is_clean_and_empty_graph_is_the_ablated_baseline(model, task):
    met = make_metric("logit_diff", model, task)
    with torch.no_grad():
        clean = model(task.clean)
        corrupted = model(task.corrupted)
        nodes = ["input", *cs.nodes.all_heads(model.shape), *cs.nodes.all_mlps(model.shape)]
        zero, _ = cs.engine.run(model, task, [cs.Ablate(cs.Site(n), "zero") for n in nodes])
        mean, _ = cs.engine.run(
            model, task, [cs.Ablate(cs.Site(n), "mean", reference=task.corrupted) for n in nodes]
        )
    baseline = {"resample": corrupted, "zero": zero, "mean": mean}
    for ablation, want in baseline.items():
        refs = references(model, task, ablation)
        with torch.no_grad():
            full = run_with_mask(model, task.clean, EdgeMask(model), refs.ablated)
            empty = run_with_mask(model, task.clean, EdgeMask(model, value=1.0), refs.ablated)
        assert torch.equal(full, clean), ablation
        torch.testing.assert_close(empty, want, atol=2e-4, rtol=1e-4, msg=ablation)
        # the loss discovery measures: exactly the clean value on the full graph
        assert float(met(full).mean()) == met.clean_value()
    # and the analysis layer's edge-level faithfulness agrees: 1 on the full graph
    f = dc.circuit_faithfulness(model, task, cs.full_edge_graph(model.shape))
    assert f["circuit_value"] == f["model_value"] and f["value"] == 1.0
    empty = dc.circuit_faithfulness(model, task, cs.Circuit("empty", shape=model.shape))
    assert empty["circuit_value"] == empty["ablated_value"]
    assert empty["ablated_value"] == pytest.approx(
        float(cs.metrics.logit_diff(corrupted, task).mean()), abs=1e-4
    )


# -- EAP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ablation,positions",
    [("resample", "all"), ("mean", "all"), ("zero", "all"), ("resample", "END"), ("mean", "END")],
)
def test_eap_is_the_mask_gradient(model, task, ablation, positions):
    """Also checks EAP's factored sender outputs (heads as z @ W_O, ablated per position)
    against the engine's dense references."""
    got = dc.eap(model, task, ablation=ablation, positions=positions).frame["score"]
    want = mask_grad(model, task, ablation=ablation, positions=positions).frame["score"]
    assert want.abs().max() > 0.1  # effects are large enough to mean something
    assert (got - want).abs().max() < 1e-5


def test_eap_equals_finite_differences(task):
    m = gpt2(seed=1)
    m.hf.to(torch.float64)
    sc = dc.eap(m, task, metric="kl").frame.set_index("edge")["score"]  # KL: gradient 0 at clean
    assert sc.abs().max() < 1e-7  # (kl_div computes in float32)
    sc = dc.eap(m, task).frame.set_index("edge")["score"]
    met = make_metric("logit_diff", m, task)
    refs = references(m, task, "resample")
    h = 1e-5
    for name in [
        "input->a0.h1<k>",
        "a0.h2->a1.h3<q>",
        "m0->a1.h0<v>",
        "a1.h2->logits",
        "a0.h0->m1",
    ]:
        e = cs.parse_edge(name)
        key = (e.src.name, e.dst.name, e.channel)
        vals = []
        for sign in (1, -1):
            mask = EdgeMask(m, dtype=torch.float64)
            mask[key] = sign * h
            with torch.no_grad():
                vals.append(float(met(run_with_mask(m, task.clean, mask, refs.ablated)).mean()))
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(fd - sc[name]) < 1e-6 * max(1.0, abs(fd)), (name, fd, sc[name])


@pytest.mark.parametrize(
    "family,cfg",
    [
        ("gpt_neox", {}),
        ("gpt_neox", {"use_parallel_residual": False}),
        ("llama", {}),
        ("llama", {"n_kv_heads": 2}),  # grouped k/v: the engine-capture path
    ],
)
def test_eap_other_families(family, cfg):
    m = cs.random_model(family, n_layers=2, n_heads=4, d_model=32, d_vocab=484,
                        tokenizer=toy_tokenizer(), seed=3, **cfg)  # fmt: skip
    with torch.no_grad():
        for p in m.hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    task = cs.tasks.ioi(m, n=4, seed=0)
    got = dc.eap(m, task).frame["score"]
    want = mask_grad(m, task).frame["score"]
    assert (got - want).abs().max() < 1e-5 * max(1.0, float(want.abs().max()))
    met = make_metric("logit_diff", m, task)
    fast = receiver_grads(m, task, met)
    slow = captured_receiver_grads(m, task, met)
    for key, g in slow.items():  # both paths give every receiver's own input gradient
        assert (fast[key] - g).abs().max() < 1e-5 * max(1.0, float(g.abs().max())), key


# -- EAP-IG ----------------------------------------------------------------------------------


def test_eap_ig_one_step_is_eap(model, task):
    a = dc.eap(model, task).frame["score"]
    for method in ("inputs", "activations"):
        b = dc.eap_ig(model, task, steps=1, method=method).frame["score"]
        assert (a - b).abs().max() < 1e-5, method


def test_eap_ig_inputs_by_hand(model, task):
    """Each step's receiver gradient recomputed with a node-level input patch and one capture."""
    steps = 3
    ig = dc.eap_ig(model, task, steps=steps).frame.set_index("edge")["score"]
    met = make_metric("logit_diff", model, task)
    refs = references(model, task, "resample")
    B, P = task.clean.shape
    clean_in = refs.clean.blocks[0].view(B, P, -1)
    abl_in = refs.ablated.blocks[0].view(B, P, -1)
    deltas = refs.deltas()
    senders = EdgeMask(model).senders
    for name, capture in [("a0.h1->a1.h2<k>", "a1.h2<k>"), ("m0->logits", "logits:in")]:
        e = cs.parse_edge(name)
        total = 0.0
        for k in range(1, steps + 1):
            x = abl_in + (k / steps) * (clean_in - abl_in)
            lg, cache = cs.engine.run(model, task.clean, [cs.Patch(cs.Site("input"), x)],
                                      capture=[capture], grad=True)  # fmt: skip
            (g,) = torch.autograd.grad(met(lg).sum(), cache[capture])
            total += float(deltas[senders.index(e.src.name)] @ g.reshape(-1))
        assert abs(total / (steps * len(task)) - ig[name]) < 1e-5, name


def test_eap_ig_activations_sums_the_path_derivative(task):
    """Along the mask path b * ones, the scores' sum is (1/m) sum_k dL(b_k)/db (the chain rule
    over all edges), checked with central finite differences of L(b * ones) at b_k = k/m."""
    m = gpt2(seed=1)
    m.hf.to(torch.float64)
    steps = 4
    sc = dc.eap_ig(m, task, steps=steps, method="activations")
    met = make_metric("logit_diff", m, task)
    refs = references(m, task, "resample")

    def L(b):
        with torch.no_grad():
            lg = run_with_mask(m, task.clean, EdgeMask(m, value=b, dtype=torch.float64),
                               refs.ablated)  # fmt: skip
        return float(met(lg).mean())

    h = 1e-5
    want = sum((L(k / steps + h) - L(k / steps - h)) / (2 * h) for k in range(steps)) / steps
    assert abs(want) > 0.05
    assert abs(sc.frame["score"].sum() - want) < 1e-6 * max(1.0, abs(want))


def test_eap_ig_ranks_edges_like_exact_patching(model, task):
    exact = dc.exact_patching(model, task, progress=False)
    ig = dc.eap_ig(model, task, steps=5)
    rho = dc.spearman(ig, exact)
    assert rho >= 0.9, rho


# -- exact patching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ablation,positions",
    [("resample", "all"), ("mean", "all"), ("zero", "all"), ("resample", "END")],
)
def test_exact_patching_equals_one_edge_masks(model, task, ablation, positions):
    names = ["input->a0.h0<q>", "a0.h3->a1.h1<v>", "m0->m1", "a1.h0->logits", "input->logits"]
    sc = dc.exact_patching(model, task, ablation=ablation, positions=positions, edges=names,
                           progress=False)  # fmt: skip
    s = sc.frame.set_index("edge")["score"]
    assert s.drop(names).isna().all()
    met = make_metric("logit_diff", model, task)
    refs = references(model, task, ablation, positions)
    for name in names:
        e = cs.parse_edge(name)
        mask = EdgeMask(model)
        mask[e.src.name, e.dst.name, e.channel] = 1.0
        with torch.no_grad():
            want = float(met(run_with_mask(model, task.clean, mask, refs.ablated)).mean())
        assert abs(s[name] - (want - met.clean_value())) < 2e-5, name


def test_positions_restrict_the_ablation(model, task):
    refs = references(model, task, "resample", "END")
    B, P = task.clean.shape
    ab = torch.cat(refs.ablated.blocks).view(-1, B, P, model.shape.d_model)
    cl = torch.cat(refs.clean.blocks).view(-1, B, P, model.shape.d_model)
    end = torch.zeros(B, P, dtype=torch.bool)
    end[torch.arange(B), task.positions["END"]] = True
    assert torch.equal(ab[:, ~end], cl[:, ~end]) and not torch.equal(ab[:, end], cl[:, end])


# -- ACDC ------------------------------------------------------------------------------------


def naive_acdc(model, task, tau, metric):
    """ACDC written out plainly: receivers from the output back, senders latest first."""
    met = make_metric(metric, model, task)
    refs = references(model, task, "resample")
    mask = EdgeMask(model)
    s = model.shape
    senders = mask.senders

    def loss():
        with torch.no_grad():
            return float(met(run_with_mask(model, task.clean, mask, refs.ablated)).double().mean())

    receivers = [("logits", None)]
    for L in reversed(range(s.n_layers)):
        receivers.append((f"m{L}", None))
        for h in reversed(range(s.n_heads)):
            receivers += [(f"a{L}.h{h}", c) for c in "qkv"]
    current, kept, scores = loss(), set(), {}
    for dst, ch in receivers:
        d = cs.parse_node(dst).depth()
        ins = [x for x in senders if cs.parse_node(x).depth() < d]
        if dst != "logits":
            outs = [e for e in cs.edge_graph.full_edges(s) if e[0] == dst]
            if all(float(mask[e]) == 1.0 for e in outs):
                for x in ins:
                    mask[x, dst, ch] = 1.0
                continue
        for x in reversed(ins):
            mask[x, dst, ch] = 1.0
            new = loss()
            scores[(x, dst, ch)] = new - current
            if new - current < tau:
                current = new
            else:
                mask[x, dst, ch] = 0.0
                kept.add((x, dst, ch))
    return kept, scores


def test_acdc_matches_a_plain_implementation_and_repeats_bit_for_bit():
    m = gpt2(n_layers=2, n_heads=2, d_model=16, seed=2)
    task = cs.tasks.ioi(m, n=6, seed=0)
    a = dc.acdc(m, task, threshold=0.002, progress=False)
    b = dc.acdc(m, task, threshold=0.002, progress=False)
    assert a.frame.equals(b.frame)  # scores, tested and kept: bit for bit, NaNs in place
    kept, scores = naive_acdc(m, task, 0.002, "kl")
    f = a.frame
    got = {(r.src, r.dst, r.channel if isinstance(r.channel, str) else None)
           for r in f[f["kept"]].itertuples()}  # fmt: skip
    assert got == kept and 0 < len(kept) < len(f)
    tested = f[f["tested"]].set_index("edge")["score"]
    assert len(tested) == len(scores)
    for (x, d, ch), v in scores.items():
        assert tested[cs.nodes.format_edge(x, d, ch)] == v
    # the loss ACDC ended on is the loss of its circuit
    met = make_metric("kl", m, task)
    refs = references(m, task, "resample")
    with torch.no_grad():
        lg = run_with_mask(m, task.clean, EdgeMask.from_circuit(m, dc.kept(a)), refs.ablated)
    assert float(met(lg).double().mean()) == a.meta["final_loss"]


def test_acdc_threshold_zero_keeps_more_and_progress_bar(model, task, capsys):
    lo = dc.acdc(model, task, threshold=0.0, metric="logit_diff", progress=True)
    err = capsys.readouterr().err
    assert "ACDC" in err and "tested=" in err and "kept=" in err
    hi = dc.acdc(model, task, threshold=0.05, metric="logit_diff", progress=False)
    assert hi.frame["kept"].sum() < lo.frame["kept"].sum()
    assert set(hi.meta) >= {"method", "metric", "ablation", "data", "seed", "timings", "threshold"}


# -- planted ground truth -------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    return build_planted()


def build_planted():
    """Dead heads a0.h2 and a1.h1 (zero W_O rows), a dead MLP m0 (zero output weights and
    bias), and a1.h0 whose query weights are zero: its q input carries nothing, and since its
    attention is then uniform, neither does its k input. Also dead by the task: the last token
    is the same in clean and corrupted prompts, so ``input`` sends nothing to receivers that
    only read END (the last layer's queries and MLP, the logits)."""
    m = gpt2(n_layers=2, n_heads=3, d_model=24, seed=4)
    dh = m.shape.d_head
    d = m.shape.d_model
    with torch.no_grad():
        h = m.hf.transformer.h
        h[0].attn.c_proj.weight[2 * dh : 3 * dh] = 0
        h[1].attn.c_proj.weight[1 * dh : 2 * dh] = 0
        h[0].mlp.c_proj.weight.zero_()
        h[0].mlp.c_proj.bias.zero_()
        h[1].attn.c_attn.weight[:, 0:dh] = 0  # head 0's q columns
        h[1].attn.c_attn.bias[0:dh] = 0
    assert d == 3 * dh
    dead_src = {"a0.h2", "a1.h1", "m0"}
    dead_dst = {("a0.h2", c) for c in "qkv"} | {("a1.h1", c) for c in "qkv"}
    dead_dst |= {("m0", None), ("a1.h0", "q"), ("a1.h0", "k")}
    end_only = {("m1", None), ("logits", None)} | {(f"a1.h{i}", "q") for i in range(3)}
    dead = {
        cs.nodes.format_edge(s, r, c)
        for s, r, c in cs.edge_graph.full_edges(m.shape)
        if s in dead_src or (r, c) in dead_dst or (s == "input" and (r, c) in end_only)
    }
    return m, cs.tasks.ioi(m, n=8, seed=0), dead


def test_planted_no_method_keeps_a_dead_edge(planted):
    m, task, dead = planted
    runs = {
        "exact": dc.exact_patching(m, task, progress=False),
        "eap": dc.eap(m, task),
        "eap-ig-inputs": dc.eap_ig(m, task, steps=3),
        "eap-ig-activations": dc.eap_ig(m, task, steps=3, method="activations"),
    }
    live = len(runs["eap"]) - len(dead)
    for name, sc in runs.items():
        s = sc.series()
        assert s[list(dead)].abs().max() < 1e-6, name
        chosen = {e.name for e in dc.top_n(sc, live).edges}
        assert not chosen & dead, name
        assert not {e.name for e in dc.greedy(sc, live).edges} & dead, name


def test_planted_acdc_keeps_every_live_edge(planted):
    m, task, dead = planted
    found = dc.acdc(m, task, threshold=1e-7, progress=False)
    kept = set(found.frame.loc[found.frame["kept"], "edge"])
    assert not kept & dead
    assert kept == set(found.frame["edge"]) - dead


# -- typed errors ----------------------------------------------------------------------------


def test_typed_errors(model, task):
    neutral = cs.tasks.neutral(model, n=4, seed=0)
    for fn in (dc.acdc, dc.eap, dc.exact_patching, dc.eap_ig):
        with pytest.raises(dc.DiscoveryError, match="no corrupted prompts"):
            fn(model, neutral)
    dc.eap(model, neutral, ablation="zero", metric="kl")  # zero ablation needs no corruption
    with pytest.raises(dc.DiscoveryError, match="one float per example"):
        dc.eap(model, task, metric=lambda lg, t: lg[:, -1])
    with pytest.raises(dc.DiscoveryError, match="one float per example"):
        dc.acdc(model, task, metric=lambda lg, t: cs.metrics.logit_diff(lg, t).mean())
    for tau in (-0.1, float("nan")):
        with pytest.raises(dc.DiscoveryError, match="tau"):
            dc.acdc(model, task, threshold=tau)
    with pytest.raises(cs.UnsupportedArchitectureError):
        dc.eap(model.hf, task)
    with pytest.raises(cs.UnsupportedArchitectureError):
        dc.acdc(torch.nn.Linear(2, 2), task)
    with pytest.raises(dc.DiscoveryError, match="ablation"):
        dc.eap(model, task, ablation="shuffle")
    with pytest.raises(dc.DiscoveryError, match="metric"):
        dc.eap(model, task, metric="accuracy")
    with pytest.raises(dc.DiscoveryError, match="EAP-IG method"):
        dc.eap_ig(model, task, method="outputs")
    with pytest.raises(cs.PositionError):
        dc.eap(model, task, positions="NOPE")
    assert isinstance(dc.DiscoveryError("x"), cs.CircuitSteerError | ValueError)
