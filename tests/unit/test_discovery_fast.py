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
