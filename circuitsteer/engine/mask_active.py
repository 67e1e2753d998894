"""The no-grad masked forward's *active* receivers (a mixin of
:class:`circuitsteer.engine.mask_hooks.MaskHooks`): per layer, which head receivers have a
nonzero mask column, the distinct inputs they read (normalized ``CHUNK_ROWS`` rows at a time),
and their q/k/v columns computed from those inputs in place of the module's output, with the
all-ones columns read from the reference's ablated input ``R`` and the first changed layer's
inputs and projections cached by column (:mod:`circuitsteer.engine.mask_ablated`).

Example:
    >>> key_of(torch.tensor([0.0, 1.0])) == key_of(torch.tensor([0.0, 1.0]))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer.engine.mask_ablated import AblatedCache, ablated_input


@dataclass
class Plan:
    """One layer's active head receivers in a no-grad forward. ``x``: the receivers (ascending
    column indices) that read ``x + u.T @ deltas``, the distinct column each reads and the stack
    of those inputs, normalized (projected in place of the module's output); ``ones``: the
    receivers whose every edge is patched (they read ``R``: the module's output on ``normed``,
    the norm of ``R``, kept in the cache)."""

    x: tuple[torch.Tensor, torch.Tensor, Any] | None = None
    ones: torch.Tensor | None = None
    normed: torch.Tensor | None = None
    # the first changed layer: its inputs are the clean forward's (x and the deltas below), so
    # each distinct column's normalized input and each receiver's projection are computed on
    # their own and kept in the cache, keyed by the column, for the next forward
    first: bool = False


CHUNK_ROWS = 512  # rows (batch x positions) of the distinct inputs computed at a time


def normed_inputs(ln: Any, x: torch.Tensor, mt: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """``[U, B*P, d]``: ``norm(x + u.T @ deltas)`` for each row ``u`` of ``mt`` (``[U, n]``),
    ``CHUNK_ROWS`` rows at a time so that the sums stay in cache until normalized (the stack
    of sums is as large as U residual streams; writing it out and reading it back cost as much
    as the product)."""
    d = x.shape[-1]
    xs = x.reshape(-1, d)
    BP, U, n = xs.shape[0], mt.shape[0], deltas.shape[0]
    D = deltas.view(n, BP, d)
    out = torch.empty(U, BP, d, dtype=x.dtype, device=x.device)
    for a in range(0, BP, CHUNK_ROWS):
        b = min(BP, a + CHUNK_ROWS)
        y = torch.addmm(xs[a:b].reshape(1, -1), mt, D[:, a:b].reshape(n, -1))
        out[:, a:b] = ln.forward(y.view(U, b - a, d))
    return out


def key_of(u: torch.Tensor) -> bytes:
    """A mask column as a cache key (its values' bytes)."""
    return u.detach().cpu().numpy().tobytes()


class ActiveReceivers:
    """The active receivers' q/k/v columns and ``R`` (methods of ``MaskHooks``)."""

    model: Any
    arch: Any
    ref: list[torch.Tensor] | None
    cache: AblatedCache
    plan: dict[int, Plan | None]

    def _qkv_active(
        self, L: int, module: Any, out: torch.Tensor, r0: int, R: int, cols: torch.Tensor, span: Any
    ) -> torch.Tensor | None:
        """No grad: the q/k/v columns of this module's active receivers (:class:`Plan`), in place."""
        plan = self.plan.get(L)
        if plan is None:  # no active receiver in this layer
            return None
        idx = cols.to(out.device)
        dh = self.model.shape.d_head
        W = self.arch.in_cols(module, idx if span is None else span)
        W = W.reshape(-1, R, dh).transpose(0, 1)  # [R, d, dh]
        cols2, d_in = idx.view(R, dh), W.shape[1]
        bias = getattr(module, "bias", None)
        lead = out.shape[:-1]

        def local(act: torch.Tensor) -> torch.Tensor:  # this module's receivers among ``act``
            lo, hi = (int(i) for i in torch.searchsorted(act, torch.tensor([r0, r0 + R])))
            return torch.arange(lo, hi)

        def groups(entry):  # (receivers, their output columns, their distinct input)
            act, inv, (stack, keys) = entry
            k = local(act)
            rs_all, inv = act[k] - r0, inv[k]
            for u in torch.unique(inv).tolist():  # one product per distinct input
                rs = rs_all[inv == u]
                if keys is not None:  # first changed layer: one receiver at a time, cached
                    for r in rs.tolist():
                        yield keys[u] + (r0 + r,), stack[u], W[r], cols2[r]
                    continue
                Wu = W.index_select(0, rs).permute(1, 0, 2).reshape(d_in, -1)  # [d, j*dh]
                yield None, stack[u], Wu, cols2.index_select(0, rs.to(idx.device)).flatten()

        if plan.ones is not None and plan.normed is not None:
            k = local(plan.ones)
            if k.numel():  # their columns of the module's output on the norm of R (cached)
                normed = plan.normed
                Q = self.cache.get(("qkv", L, r0), lambda: module.forward(normed))
                take = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
                take[cols2.index_select(0, (plan.ones[k] - r0).to(idx.device)).flatten()] = True
                out = torch.where(take, Q, out)
        if plan.x is not None:
            for key, normed, Wu, sel in groups(plan.x):

                def proj(normed=normed, Wu=Wu, sel=sel) -> torch.Tensor:
                    return normed @ Wu if bias is None else torch.addmm(bias[sel], normed, Wu)

                p = proj() if key is None else self.cache.get(("proj",) + key, proj, sweep=True)
                out.index_copy_(-1, sel, p.view(*lead, -1))
        return out

    def _ablated(self, key: str, n: int) -> torch.Tensor:
        """``R`` of receiver group ``key`` (``n`` senders): :func:`ablated_input`."""
        ref = self.ref
        assert ref is not None  # a masked forward always has its reference
        return self.cache.get(("R", key), lambda: ablated_input(self.model, ref, n))
