"""The *ablated input* of a receiver group in a no-grad masked forward: what a receiver reads when
every one of its incoming edges is patched.

A receiver reads ``x + sum_s u_s (patched_s - current_s)`` (:mod:`circuitsteer.engine.masks`).
The residual stream is additive in the senders (``x = input + sum_s current_s + the attention
output biases`` on every architecture the engine knows: GPT-2, GPT-NeoX with or without a
parallel residual, LLaMA), so with ``R = input_patched + sum_s patched_s + biases`` the same
input is

    R - sum_s (1 - u_s) (patched_s - current_s),

which reads only the senders whose edge is *not* fully patched. ACDC's masks above the receiver
under test are nearly all ones (17 of 24 columns of ioi-circuit's last layer are all ones), so
this reads a few sender rows where ``x + u.T @ deltas`` reads all of them, and a column of ones
reads ``R`` itself: a constant of the reference, whose normalized input and q/k/v projections
are computed once per :class:`~circuitsteer.engine.masks.MaskPrefix` (:class:`AblatedCache`).
Which form a column uses depends on the mask alone (:func:`fewer_patched`), so a resumed forward
and a whole one compute the same values the same way.

Example:
    >>> import torch, circuitsteer as cs
    >>> from circuitsteer.engine.masks import EdgeMask, run_with_mask, sender_outputs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16)
    >>> a, b = torch.randint(0, 256, (2, 2, 5))
    >>> lg = run_with_mask(m, a, EdgeMask(m, value=1.0), b)   # every edge patched: reads R
    >>> torch.allclose(lg, m(b), atol=1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer import edge_graph as eg


def ablated_input(model: Any, ref: list[torch.Tensor], n: int) -> torch.Tensor:
    """``[B*P*d]``: the input of a receiver whose first ``n`` senders (forward order) are all
    patched: the patched input and sender rows summed in a fixed order, plus the attention
    output bias of every layer whose heads are among them (an MLP's output includes its bias;
    the heads' outputs, ``z_h @ W_O[h]``, do not)."""
    s, arch = model.shape, model.arch
    per = 1 + int(eg.has_mlps(s))  # sender blocks per layer: the heads, then the MLP
    R = ref[0][0].clone()
    rows = 1
    for i, blk in enumerate(ref[1:]):
        if rows >= n:
            break
        R += blk.sum(0) if blk.shape[0] > 1 else blk[0]
        if i % per == 0:  # layer i // per's heads
            bias = getattr(model.module(arch.path("attn_out", i // per)), "bias", None)
            if bias is not None:
                R.view(-1, s.d_model).add_(bias.to(R.dtype))
        rows += blk.shape[0]
    assert rows == n, "a receiver group ends between a sender's rows"
    return R


class AblatedCache:
    """Values of a masked forward that depend on the reference and the mask only, for the next
    forward: per receiver group ``R`` (:func:`ablated_input`), per layer the first norm of ``R``
    and each q/k/v module's output on it, and (``sweep``) the normalized inputs and projections
    of the first changed layer's receivers, keyed by their mask column (its inputs are the clean
    forward's). A :class:`~circuitsteer.engine.masks.MaskPrefix` holds one for all its forwards
    (the model and reference are fixed); a forward without one fills a fresh one (the same
    values, computed the same way). ``sweep`` entries not used by a forward are dropped after it
    (:meth:`sweep`), so the cache holds one forward's worth of them."""

    def __init__(self) -> None:
        self.store: dict[tuple, torch.Tensor] = {}
        self.swept: set[tuple] = set()  # keys dropped unless used again
        self.used: set[tuple] = set()

    def get(self, key: tuple, make: Any, sweep: bool = False) -> torch.Tensor:
        hit = self.store.get(key)
        if hit is None:
            hit = self.store[key] = make()
        if sweep:
            self.swept.add(key)
            self.used.add(key)
        return hit

    def sweep(self) -> None:
        """Drop the ``sweep`` entries the last forward did not use."""
        for key in self.swept - self.used:
            del self.store[key]
        self.swept, self.used = set(self.used), set()
