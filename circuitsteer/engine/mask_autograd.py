"""The autograd function of a masked forward (:mod:`circuitsteer.engine.masks`): each receiver
group's mask-weighted sum of the sender deltas, whose backward is the mask's gradient and the
senders' gradients, accumulated across groups in one buffer."""

from __future__ import annotations

from typing import Any

import torch


class SenderGrads:
    """The senders' gradients of one masked forward, accumulated across receiver groups in one
    ``[n, B*P*d]`` buffer: each group's backward adds ``-(m @ grad(D))`` into its rows in place
    (one ``addmm_``) and the group that first reads a block of sender rows hands them to autograd
    as views, instead of every group returning its own copy for autograd to sum."""

    def __init__(self) -> None:
        self.S: torch.Tensor | None = None
        self.low = 0  # first row handed back in this backward pass


class MaskedSum(torch.autograd.Function):
    """``D = m.T @ deltas``: each receiver's mask-weighted sum of the sender deltas.

    ``deltas`` ``[n, B*P*d]`` is the forward's stacked buffer of ``reference - output`` rows,
    written without autograd; ``outs`` are sender outputs (the buffer's rows, in order), passed
    only to route gradients. The backward is two matrix products and no copies: the mask's
    gradient ``deltas @ grad(D).T`` (each edge's ``grad(receiver input) . delta``) and the
    senders' ``-(m @ grad(D))``. With ``state`` (a :class:`SenderGrads`), ``outs`` are the
    senders of rows ``c:n`` that no earlier group reads: the sender term is accumulated into
    ``state``'s buffer and those rows handed back (every later group reading them has run its
    backward by then, since this group's ``grad(D)`` depends on their senders' gradients).
    Without ``state``, ``outs`` are all ``n`` senders and get their term directly. The buffer is
    kept on ``ctx`` (rows ``[:n]`` are final once written, and every forward allocates a fresh
    one)."""

    @staticmethod
    def forward(
        ctx: Any,
        m: torch.Tensor,
        deltas: torch.Tensor,
        state: SenderGrads | None,
        c: int,
        *outs: torch.Tensor,
    ) -> Any:
        ctx.deltas, ctx.state, ctx.c = deltas, state, c
        ctx.sizes = [o.shape[0] for o in outs]
        ctx.save_for_backward(m)
        return m.T.to(deltas.dtype) @ deltas

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        (g,) = grads
        (m,) = ctx.saved_tensors
        gm = (ctx.deltas @ g.T).to(m.dtype) if ctx.needs_input_grad[0] else None
        gouts: list[torch.Tensor | None] = [None] * len(ctx.sizes)
        st, c, n = ctx.state, ctx.c, m.shape[0]
        if st is None:
            if any(ctx.needs_input_grad[4:]):
                gouts = list(torch.mm(m.to(g.dtype).neg(), g).split(ctx.sizes))
            return (gm, None, None, None, *gouts)
        if st.S is not None and n > st.low:  # a new backward pass over this graph
            st.S = None
        if st.S is None:
            st.S = torch.mm(m.to(g.dtype).neg(), g)
        else:
            st.S[:n].addmm_(m.to(g.dtype), g, alpha=-1)
        rows = st.S[c:n]
        st.low = c
        if c == 0:
            st.S = None
        if any(ctx.needs_input_grad[4:]):
            gouts = list(rows.split(ctx.sizes))
        return (gm, None, None, None, *gouts)
