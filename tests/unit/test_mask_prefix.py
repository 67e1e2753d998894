"""The masked forward's fast paths against the whole one: a forward resumed at the mask's first
changed layer (``mask_prefix``) is bit for bit the whole forward, in any order of starts (the
reused delta buffer and the cached partial sums); skipping inactive receivers agrees with the
dense computation of every receiver (the autograd path) to float precision; every family."""

from __future__ import annotations

import pytest
import torch
from perturbed import model_fixture

import circuitsteer as cs
from circuitsteer.engine.masks import EdgeMask, mask_prefix, run_with_mask, sender_outputs

P = 6
FAMILIES = {
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {"rotary_pct": 0.5}),  # parallel residual
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "llama": ("llama", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
}


model = model_fixture(FAMILIES)


@pytest.fixture(scope="module")
def toks():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, P), generator=g), torch.randint(0, 256, (3, P), generator=g)


def random_mask(model, first: int, seed: int, p: float = 0.6) -> EdgeMask:
    """Zero in the groups before the ``first``-th, random 0/1 from there on."""
    mask = EdgeMask(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, t in enumerate(mask.tensors.values()):
            if i >= first:
                t.copy_((torch.rand(t.shape, generator=g) < p).to(t.dtype))
    return mask


def test_resumed_forward_is_the_whole_forward(model, toks):
    clean, corrupt = toks
    ref = sender_outputs(model, corrupt)
    prefix = mask_prefix(model, clean, ref)
    n_groups = len(EdgeMask(model).tensors)
    with torch.no_grad():
        assert torch.equal(run_with_mask(model, clean, EdgeMask(model), prefix), model(clean))
        # starts up and down (restored delta rows) and repeats (cached partial sums)
        firsts = [n_groups - 1, 1, n_groups - 2, 3, n_groups - 1, 0, 2, n_groups - 3]
        for i, first in enumerate(firsts * 2):
            mask = random_mask(model, first, seed=i % len(firsts))
            got = run_with_mask(model, clean, mask, prefix)
            want = run_with_mask(model, clean, mask, ref)
            assert torch.equal(got, want), (first, prefix.start(mask))


def test_resumed_forward_keeps_the_blocks(model, toks):
    clean, corrupt = toks
    prefix = mask_prefix(model, clean, corrupt)
    blocks = [model.module(model.arch.path("block", L)) for L in range(model.shape.n_layers)]
    mask = random_mask(model, len(EdgeMask(model).tensors) - 2, seed=0)
    with torch.no_grad():
        run_with_mask(model, clean, mask, prefix)
    parent = model.module(model.arch.path("block", 0).rpartition(".")[0])
    assert list(parent) == blocks
    assert prefix.start(mask) > 0
    with pytest.raises(cs.errors.InterventionError, match="other tokens"):
        run_with_mask(model, corrupt, mask, prefix)


def test_active_receivers_equal_the_dense_computation(model, toks):
    """Without autograd only receivers with a nonzero mask column are computed; with it (grad
    on, a mask that needs none) every receiver is, as before: the same logits to float
    precision."""
    clean, corrupt = toks
    ref = sender_outputs(model, corrupt)
    for first, seed, p in ((0, 1, 0.5), (2, 2, 0.3), (0, 3, 1.0), (4, 4, 0.05)):
        mask = random_mask(model, first, seed, p)
        with torch.no_grad():
            fast = run_with_mask(model, clean, mask, ref)
        dense = run_with_mask(model, clean, mask, ref, grad=True).detach()
        assert torch.allclose(fast, dense, atol=1e-5, rtol=1e-5), (first, p)
