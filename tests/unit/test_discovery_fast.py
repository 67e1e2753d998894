"""Discovery's fast paths against the slow ones: ACDC's resumed forwards give the same kept
edges and bit-identical scores as whole masked forwards (3 layers, MLPs, both metrics),
exact patching through resumed one-edge masks equals the engine's edge-restricted Patch
variants, the closed-form norm VJP equals autograd's (LayerNorm, RMSNorm), and EAP-IG's
stacked interpolation steps equal one pass per step."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from analysis_models import strong_gpt2

import circuitsteer as cs
from circuitsteer import discovery as dc
from circuitsteer.discovery._common import references
from circuitsteer.discovery._grads import norm_vjp
from circuitsteer.discovery._metric import make_metric
from circuitsteer.discovery.acdc import _has_children, receiver_order
from circuitsteer.engine.masks import EdgeMask, run_with_mask

torch.set_num_threads(1)
eap_mod = importlib.import_module("circuitsteer.discovery.eap")  # the module, not the function
grads_mod = importlib.import_module("circuitsteer.discovery._grads")


@pytest.fixture(scope="module")
def model():
    m = strong_gpt2(seed=1, n_layers=3, n_heads=2, d_model=16)
    with torch.no_grad():
        for block in m.hf.transformer.h:
            block.attn.c_attn.weight.mul_(0.5)
    return m


@pytest.fixture(scope="module")
def task(model):
    return cs.tasks.ioi(model, n=6, seed=0)


def slow_acdc(model, task, tau, metric):
    """ACDC's loop with every loss from a whole masked forward (no prefix)."""
    met = make_metric(metric, model, task)
    refs = references(model, task, "resample")
    mask = EdgeMask(model)

    def loss():
        with torch.no_grad():
            return float(met(run_with_mask(model, task.clean, mask, refs.ablated)).double().mean())

    current, scores = loss(), {}
    for node, key, col in receiver_order(model.shape):
        t = mask.tensors[key]
        if node != "logits" and not _has_children(mask, node):
            with torch.no_grad():
                t[:, col] = 1.0
            continue
        for row in reversed(range(mask.groups[key].senders)):
            with torch.no_grad():
                t[row, col] = 1.0
            new = loss()
            scores[(key, row, col)] = new - current
            if new - current < tau:
                current = new
            else:
                with torch.no_grad():
                    t[row, col] = 0.0
    return mask, scores, current


@pytest.mark.parametrize("metric,tau", [("kl", 0.002), ("logit_diff", 0.01)])
def test_acdc_resumed_forwards_equal_whole_forwards(model, task, metric, tau):
    found = dc.acdc(model, task, threshold=tau, metric=metric, progress=False)
    mask, scores, final = slow_acdc(model, task, tau, metric)
    got = found.tensors()
    kept = dc.kept(found)
    assert {e.name for e in kept.edges} == {e.name for e in EdgeMask.to_circuit(mask).edges}
    assert 0 < len(kept.edges) < len(found)
    assert found.meta["n_tested"] == len(scores)
    for (key, row, col), v in scores.items():
        assert float(got[key][row, col]) == v  # bit for bit
    assert found.meta["final_loss"] == final


@pytest.mark.parametrize(
    "ablation,positions", [("resample", "all"), ("mean", "END"), ("zero", "all")]
)
def test_exact_patching_by_mask_equals_patch_variants(model, task, ablation, positions):
    a = dc.exact_patching(model, task, ablation=ablation, positions=positions, progress=False)
    b = dc.exact_patching(model, task, ablation=ablation, positions=positions, progress=False,
                          via="patch")  # fmt: skip
    assert a.meta["via"] == "mask" and b.meta["via"] == "patch"
    assert a.frame["edge"].equals(b.frame["edge"])
    assert _maxdiff(a, b) < 2e-5
    with pytest.raises(dc.DiscoveryError, match="exact patching path"):
        dc.exact_patching(model, task, via="nope")


def _maxdiff(a, b) -> float:
    return float(np.abs(a.frame["score"].to_numpy() - b.frame["score"].to_numpy()).max())


def _autograd_vjp(norm, x, G, W):
    u = torch.bmm(G, W)
    xr = x.unsqueeze(0).expand(G.shape[0], *x.shape).contiguous().requires_grad_(True)
    (gx,) = torch.autograd.grad(norm(xr), xr, u)
    return gx


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_norm_vjp_equals_autograd(family):
    m = cs.random_model(family, n_layers=1, n_heads=4, d_model=32, seed=0)
    norm = m.module(m.arch.path("ln1", 0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, base in (("weight", 1.0), ("bias", 0.0)):
            p = getattr(norm, name, None)
            if isinstance(p, torch.Tensor):
                p.copy_(base + 0.5 * torch.randn(tuple(p.shape), generator=g))
    x = 2 * torch.randn(40, 32, generator=g, dtype=torch.float64) + 0.5
    G = torch.randn(6, 40, 8, generator=g, dtype=torch.float64)
    W = torch.randn(6, 8, 32, generator=g, dtype=torch.float64)
    norm.double()
    got = norm_vjp(norm, x, G, W)
    assert isinstance(got, torch.Tensor)
    # Llama's RMSNorm computes in float32 whatever the input: compare at that precision
    tol = 1e-10 if family == "gpt2" else 1e-5
    assert torch.allclose(got, _autograd_vjp(norm, x, G, W), atol=tol, rtol=tol)
    assert norm_vjp(torch.nn.Identity(), x, G, W) is None


def test_eap_ig_stacked_steps_equal_one_pass_per_step(model, task, monkeypatch):
    """Stacked steps with the closed-form VJP, stacked steps with autograd's, one pass per step
    with autograd's (the path before the fast ones): the same scores."""
    stacked = dc.eap_ig(model, task, steps=4)
    monkeypatch.setattr(grads_mod, "norm_vjp", lambda *a, **k: None)
    stacked_autograd = dc.eap_ig(model, task, steps=4)
    monkeypatch.setattr(eap_mod, "STACK_ELEMENTS", 1)
    single = dc.eap_ig(model, task, steps=4)
    scale = max(1.0, float(np.abs(single.frame["score"].to_numpy()).max()))
    assert _maxdiff(stacked, single) < 1e-6 * scale
    assert _maxdiff(stacked_autograd, single) < 1e-6 * scale


def test_contract_chunks_agree(model, task, monkeypatch):
    """EAP's streamed contraction: one chunk and many chunks of positions give the same
    scores."""
    from circuitsteer.discovery import _contract

    met = make_metric("logit_diff", model, task)
    grads, refs = eap_mod._clean_pass(model, task, met, "resample", "all")
    groups = {k: v.senders for k, v in EdgeMask(model).groups.items()}
    args = (refs.ablated, refs.clean, grads, groups, model.shape.d_model)
    whole = _contract.contract(*args)
    monkeypatch.setattr(_contract, "CHUNK_BYTES", 1)  # 16 positions per chunk
    assert task.clean.numel() > 3 * 16
    got = _contract.contract(*args)
    for k, v in whole.items():
        assert torch.allclose(got[k], v, rtol=1e-5, atol=1e-6), k


groups_mod = importlib.import_module("circuitsteer.discovery._groups")
contract_mod = importlib.import_module("circuitsteer.discovery._contract")


def _partitions(n: int):
    """Every split of range(n) into contiguous runs (as lists of run ends)."""
    for mask in range(1 << (n - 1)):
        yield [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]


@pytest.mark.parametrize("seed", range(6))
def test_row_groups_is_the_cheapest_split(seed):
    """The DP's split of the length-sorted rows costs what the cheapest of all contiguous
    splits costs (brute force), covers every row once, and each group fits max_tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (9,), generator=g)
    overhead, cap = int(torch.randint(0, 30, (1,), generator=g)), 40
    got = groups_mod.row_groups(lengths, overhead=overhead, max_tokens=cap)
    assert sorted(torch.cat(got).tolist()) == list(range(9))
    assert all(len(x) * int(lengths[x].max()) <= cap or len(x) == 1 for x in got)

    def cost(groups):
        return sum(len(x) * int(lengths[x].max()) + overhead for x in groups)

    sl = sorted(lengths.tolist())
    best = float("inf")
    for ends in _partitions(9):
        total, start = 0, 0
        for end in ends:
            rows, width = end - start, sl[end - 1]
            per = max(1, cap // width)
            total += rows * width + overhead * -(-rows // per)
            start = end
        best = min(best, total)
    assert cost(got) == best


@pytest.mark.parametrize(
    "ablation,metric,positions",
    [("resample", "logit_diff", "all"), ("mean", "kl", "all"), ("zero", "logit_diff", "END"),
     ("mean", "logit_diff", ["S2", "END"])],
)  # fmt: skip
def test_row_groups_give_the_whole_batch_scores(model, task, monkeypatch, ablation, metric,
                                                positions):  # fmt: skip
    """EAP and EAP-IG over groups of rows trimmed of their padding equal one pass over the
    padded batch (the gradient after END is zero; mean ablation keeps the batch's means)."""
    kw = dict(metric=metric, ablation=ablation, positions=positions)
    whole = [dc.eap(model, task, **kw), dc.eap_ig(model, task, steps=3, **kw)]
    calls = []
    real = groups_mod.row_groups
    monkeypatch.setattr(eap_mod, "row_groups", lambda lengths, overhead:
                        calls.append(1) or real(lengths, overhead=0, max_tokens=40))  # fmt: skip
    grouped = [dc.eap(model, task, **kw), dc.eap_ig(model, task, steps=3, **kw)]
    assert len(calls) == 2 and len(real(task.lengths, overhead=0, max_tokens=40)) > 2
    for a, b in zip(whole, grouped, strict=True):
        # EAP with KL sits at the metric's minimum: its scores are float noise (~1e-7)
        assert _maxdiff(a, b) < 1e-6 + 1e-5 * float(np.abs(a.frame["score"].to_numpy()).max())


def test_row_groups_only_for_end_metrics(model, task, monkeypatch):
    """A custom metric may read any position: its batch runs whole, padding included."""
    monkeypatch.setattr(eap_mod, "row_groups", lambda *a, **k: pytest.fail("grouped"))
    dc.eap(model, task, metric=lambda lg, t: -cs.metrics.logit_diff(lg, t))
    dc.eap(model, task, positions=[0, 1])  # an index means a column of the padded batch
    dc.eap(model, task, positions=-1)


def test_factored_contraction_equals_streamed(model, task, monkeypatch):
    """lin_scores (one GEMM over positions per head layer) and the streamed lin @ B blocks give
    the same scores."""
    monkeypatch.setattr(contract_mod, "FACTORED_GAIN", 1e9)
    factored = dc.eap_ig(model, task, steps=3, ablation="mean")
    monkeypatch.setattr(contract_mod, "FACTORED_GAIN", 0.0)
    streamed = dc.eap_ig(model, task, steps=3, ablation="mean")
    scale = max(1.0, float(np.abs(streamed.frame["score"].to_numpy()).max()))
    assert _maxdiff(factored, streamed) < 1e-6 * scale
