"""The masked forward's cache (``engine.mask_ablated.AblatedCache``) against uncached forwards:
a prefix's forwards reuse the ablated input ``R`` of every all-ones column (and its norm and
q/k/v projections) and the first changed layer's normalized inputs and projections, keyed by
their mask column. Over an ACDC-like sequence of masks (one layer's columns changed edge by
edge, columns of ones above, a column put back to an earlier value) every cached forward is bit
for bit the whole forward with a fresh cache, and to float precision the dense computation;
a cache that ignored the column (stale) would give the previous forward's values; the entries
keyed by column are dropped when a forward stops using them; every family."""

from __future__ import annotations

import pytest
import torch
from perturbed import model_fixture

from circuitsteer.engine.masks import EdgeMask, mask_prefix, run_with_mask, sender_outputs

FAMILIES = {
    "gpt2": ("gpt2", {}),
    "gpt_neox": ("gpt_neox", {"rotary_pct": 0.5}),  # parallel residual
    "llama": ("llama", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
}


model = model_fixture(FAMILIES)


@pytest.fixture(scope="module")
def toks():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (3, 6), generator=g), torch.randint(0, 256, (3, 6), generator=g)


def acdc_like(model, layer: int) -> EdgeMask:
    """Columns above ``layer`` as ACDC leaves them: every other one all ones (every edge
    ablated), the rest ones but for a few kept edges; the MLP above all ones, logits mixed."""
    mask = EdgeMask(model)
    g = torch.Generator().manual_seed(layer)
    with torch.no_grad():
        for key, t in mask.tensors.items():
            above = key == "logits" or int(key[1:]) > layer
            if not above:
                continue
            t.fill_(1.0)
            if key.startswith("a"):
                for c in range(1, t.shape[1], 2):
                    t[torch.randperm(t.shape[0], generator=g)[:2], c] = 0.0
            elif key == "logits":
                t[torch.randperm(t.shape[0], generator=g)[:3], 0] = 0.0
    return mask


def steps(model, layer: int):
    """ACDC's edits of layer ``layer``'s head columns: edges ablated one by one, some put back,
    then a column reset to all zero and ablated again (an earlier column value, cached before)."""
    t_key = f"a{layer}"
    mask = acdc_like(model, layer)
    t = mask.tensors[t_key]
    n, R = t.shape
    for col in (R - 1, R - 2, 0):
        for row in reversed(range(n)):
            with torch.no_grad():
                t[row, col] = 1.0
            yield mask
            if (row + col) % 3 == 0:
                with torch.no_grad():
                    t[row, col] = 0.0
    with torch.no_grad():
        t[:, R - 1] = 0.0
    yield mask
    with torch.no_grad():
        t[:, R - 1] = 1.0
    yield mask


def test_cached_forwards_equal_uncached_ones(model, toks):
    clean, corrupt = toks
    ref = sender_outputs(model, corrupt)
    prefix = mask_prefix(model, clean, ref)
    with torch.no_grad():
        for layer in (model.shape.n_layers - 1, 1, 0, 1):
            for i, mask in enumerate(steps(model, layer)):
                got = run_with_mask(model, clean, mask, prefix)
                want = run_with_mask(model, clean, mask, ref)  # a fresh cache, whole forward
                assert torch.equal(got, want), (layer, i)
                if i % 7 == 0:
                    with torch.enable_grad():
                        dense = run_with_mask(model, clean, mask, ref, grad=True).detach()
                    assert torch.allclose(got, dense, atol=1e-5, rtol=1e-5), (layer, i)


def test_a_stale_cache_would_differ(model, toks):
    """Two masks that differ in one column of the first changed layer: the second forward
    reads that column's own entries (the first forward's would give its logits)."""
    clean, corrupt = toks
    ref = sender_outputs(model, corrupt)
    prefix = mask_prefix(model, clean, ref)
    layer = 1
    mask = acdc_like(model, layer)
    t = mask.tensors[f"a{layer}"]
    with torch.no_grad():
        t[:, 0] = 1.0
        a = run_with_mask(model, clean, mask, prefix)
        t[0, 0] = 0.0  # one edge back: the first changed layer's column 0 reads another input
        b = run_with_mask(model, clean, mask, prefix)
        want = run_with_mask(model, clean, mask, ref)
    assert torch.equal(b, want)
    assert not torch.equal(a, b)
    # the column's entries are kept per column value; the first value's are dropped after a
    # forward that did not use them
    if model.shape.grouped_kv:  # grouped-query attention computes every receiver (no cache)
        return
    store = prefix.ablated.store
    assert len({k[2] for k in store if k[0] == "in"}) == 1
    assert {k[3] for k in store if k[0] == "proj"} == {k[2] for k in store if k[0] == "in"}


def test_each_prefix_keeps_its_own_reference(model, toks):
    """The ablated input ``R`` is the reference's: two prefixes on the same tokens with
    different references answer an all-ones mask with their own reference's run."""
    clean, corrupt = toks
    ones = EdgeMask(model, value=1.0)
    with torch.no_grad():
        for reference in (corrupt, corrupt.flip(0), clean):
            p = mask_prefix(model, clean, reference)
            run_with_mask(model, clean, EdgeMask(model), p)
            got = run_with_mask(model, clean, ones, p)
            assert torch.allclose(got, model(reference), atol=1e-4, rtol=1e-4)
