"""EAP's contraction: ``(ablated - clean sender outputs) . (receivers' input gradients)`` for
every edge, with neither side built whole.

A layer's head receivers' gradients stay factored (:class:`HeadGrads`, built by
:func:`circuitsteer.discovery._grads.norm_vjp`) and the senders' heads stay ``z`` and ``W_O``
(:mod:`circuitsteer.discovery._senders`); :func:`contract` streams over chunks of positions of
a few MB, building both sides there. On the zoo model the whole tensors would be 24x
(receivers) and 37x (senders) the residual stream: memory-bound, and, allocated fresh, mostly
page faults. (Chunks of 16 MB were fastest there with 2 threads, 8 MB with one; spreading
chunks over Python threads with single-threaded ops was slower than intra-op threads.)

Example:
    >>> a, c = [torch.ones(1, 8), torch.ones(2, 8)], [torch.zeros(1, 8), torch.zeros(2, 8)]
    >>> contract(a, c, {"x": torch.ones(1, 8)}, {"x": 3}, d=2)["x"].flatten().tolist()
    [8.0, 8.0, 8.0]
"""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.discovery._senders import HeadBlock, write_deltas


class HeadGrads:
    """One layer's head receivers' input gradients ``[R, n, d]``, summed over passes and kept
    factored until read: ``lin @ B - sum_k c_k * xh_k (+ rest)``. The norm VJP's part that is
    linear in the cotangents (``lin``, ``[n, R, dh]``) is summed over passes before its one
    batched product; each pass adds its ``(c [R, n], xh [n, d])`` term. :meth:`block` builds
    the dense gradient of a few positions at a time (what :func:`contract` streams through
    the cache), so the ``[R, n, d]`` tensor (24x the residual stream on the zoo model) is
    never allocated whole on the EAP paths. ``rest``: dense parts (an unknown norm's
    autograd VJP).

    >>> h = HeadGrads(torch.ones(2, 3, 4))
    >>> h.add_lin(torch.ones(2, 5, 2, 3))  # two stacked copies
    >>> h.add_term(torch.ones(2, 5), torch.ones(5, 4))
    >>> h.flat().shape, float(h.dense()[0, 0, 0])
    (torch.Size([2, 20]), 5.0)
    """

    def __init__(self, B: torch.Tensor | None = None) -> None:
        self.B = B  # [R, k, d], set by the first norm_vjp
        self.lin: torch.Tensor | None = None  # [n, R, k] (token-major, as computed)
        self.terms: list[tuple[torch.Tensor, torch.Tensor]] = []  # (c [R, n], xh [n, d])
        self.rest: torch.Tensor | None = None  # [R, n, d]
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None  # for term_scores

    def add_lin(self, rows: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Add ``sum over j of rows[j] * scale[j]`` to the linear factor, in place (``rows``
        ``[copies, n, R, k]``, ``scale`` ``[copies, n, 1, 1]`` or None for ones): a pass's
        stacked copies summed without a ``[copies, n, R, k]`` temporary."""
        first = 0
        if self.lin is None:
            self.lin = rows[0] * scale[0] if scale is not None else rows[0].clone()
            first = 1
        for j in range(first, len(rows)):
            if scale is None:
                self.lin.add_(rows[j])
            else:
                self.lin.addcmul_(rows[j], scale[j])

    def add_term(self, c: torch.Tensor, xh: torch.Tensor) -> None:
        """Subtract ``c[r, i] * xh[i]`` (``c`` ``[R, n]``, ``xh`` ``[n, d]``)."""
        self.terms.append((c, xh))
        self._stacked = None

    def add_rest(self, t: torch.Tensor) -> None:
        self.rest = t.clone() if self.rest is None else self.rest.add_(t)

    def block(self, i: int, j: int, terms: bool = True, lin: bool = True) -> torch.Tensor | None:
        """The summed gradients of positions ``i:j``, ``[R, j - i, d]`` (a new tensor);
        ``terms=False``: without the per-pass terms (:meth:`term_scores` contracts them);
        ``lin=False``: the dense rest only, a view (None if there is none), without the linear
        part or the terms (:func:`lin_scores` and :meth:`term_scores` contract those)."""
        if not lin:  # the dense rest alone: lin_scores and term_scores contract the others
            return None if self.rest is None else self.rest[:, i:j]
        elif self.lin is not None:
            a = self.lin[i:j].transpose(0, 1)
            out = torch.bmm(a, self.B.to(a.dtype))  # type: ignore[union-attr]
            if self.rest is not None:
                out += self.rest[:, i:j]
        else:
            assert self.rest is not None
            out = self.rest[:, i:j].clone()
        for c, xh in self.terms if terms else ():
            out.addcmul_(c[:, i:j].unsqueeze(-1), xh[i:j].unsqueeze(0), value=-1.0)
        return out

    def prepare(self) -> None:
        """Stack the terms for :meth:`term_scores` (done before threads share this object)."""
        if self._stacked is None and self.terms:
            xs = torch.stack([xh for _, xh in self.terms], dim=1)  # [n, K, d]: rows copied whole
            cs = torch.stack([c.T for c, _ in self.terms], dim=1)  # [n, K, R]
            self._stacked = (xs, cs)

    def term_scores(self, delta: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """``sum_k sum_t c_k[r, t] (delta[s, t] . xh_k[t])`` over positions ``t`` in ``i:j``
        (``delta`` ``[S, j - i, d]``), ``[S, R]``: the terms' part of ``delta . block(i, j)``
        without their ``[R, j - i, d]`` outer products (for ``S`` senders below ``R``
        receivers, or many passes, the dots with the K terms' ``xh`` are the smaller work)."""
        self.prepare()
        xs, cs = self._stacked  # type: ignore[misc]
        e = torch.bmm(delta.transpose(0, 1), xs[i:j].to(delta.dtype).transpose(1, 2))  # [t, S, K]
        S, R = delta.shape[0], cs.shape[-1]
        return e.transpose(0, 1).reshape(S, -1) @ cs[i:j].reshape(-1, R).to(delta.dtype)

    @property
    def receivers(self) -> int:
        return len(self.B) if self.B is not None else len(self.rest)  # type: ignore[arg-type]

    def dense(self) -> torch.Tensor:
        """The summed gradients ``[R, n, d]``."""
        n = self.lin.shape[0] if self.lin is not None else self.rest.shape[1]  # type: ignore
        out = self.block(0, n)
        assert out is not None
        return out

    def flat(self) -> torch.Tensor:
        """:meth:`dense` as ``[R, n*d]`` (the mask group's layout)."""
        t = self.dense()
        return t.reshape(t.shape[0], -1)


CHUNK_BYTES = 1 << 24  # the deltas' buffer per chunk of positions (see the module doc)
FACTORED_GAIN = 3.0  # a large GEMM's FLOPs against the streamed path's (measured, 2 threads)


def _layout(clean: list[Any], d: int) -> list[tuple[int, int, int, int, Any]]:
    """Per sender block: (first sender row, rows, first factor column, columns per row, the
    rows' readout ``W_O`` ``[rows, dh, d]`` or None for dense rows): where
    :func:`_factors` puts each sender's factor (a head's ``z`` delta, a dense row's delta)."""
    out, r, c0 = [], 0, 0
    for c in clean:
        if isinstance(c, HeadBlock):
            m, a, w = c.rows, c.w.shape[1], c.w
        else:
            m, a, w = c.shape[0], d, None
        out.append((r, m, c0, a, w))
        r, c0 = r + m, c0 + m * a
    return out


def _factors(ablated: list[Any], clean: list[Any], N: int, d: int, width: int) -> torch.Tensor:
    """``[N, width]``: every sender's ``ablated - clean`` factor in :func:`_layout`'s columns
    (up to ``width``), position-major."""
    first = clean[0]
    X = torch.empty(N, width, dtype=first.dtype, device=first.device)
    for a, c, (_, m, c0, k, _) in zip(ablated, clean, _layout(clean, d), strict=True):
        if c0 >= width:
            break
        if isinstance(c, HeadBlock):
            torch.sub(a.z, c.z, out=X[:, c0 : c0 + m * k].view(N, m, k))
        else:
            torch.sub(
                a.view(m, N, d),
                c.view(m, N, d),
                out=X[:, c0 : c0 + m * k].view(N, m, d).transpose(0, 1),
            )
    return X


def _width(layout: list, S: int) -> int:
    """The factor columns of the first ``S`` senders."""
    w = 0
    for r, m, c0, k, _ in layout:
        if r >= S:
            break
        w = c0 + min(m, S - r) * k
    return w


def _factored_cheaper(g: HeadGrads, width: int, S: int, d: int) -> bool:
    """Whether :func:`lin_scores` (one GEMM of ``width`` factor columns against the ``R * dh``
    columns of ``lin``) beats building ``lin @ B`` and contracting it with ``S`` dense deltas,
    given a large GEMM's better throughput (``FACTORED_GAIN``). On the zoo model (d = 128,
    dh = 16) every layer takes it; on GPT-2 small's shape (d = 768, dh = 64) the first few."""
    dh = g.lin.shape[-1]  # type: ignore[union-attr]
    return width * dh <= FACTORED_GAIN * d * (dh + S)


def lin_scores(X: torch.Tensor, layout: list, g: HeadGrads, S: int, d: int) -> torch.Tensor:
    """The linear part of ``(ablated - clean) . grads`` for the first ``S`` senders and a
    layer's head receivers, ``[S, R]``, without either side in ``d`` dimensions per position:
    with ``x_s`` a sender's factor (its ``z`` delta, read out by ``W_O_s``; a dense delta, read
    out by the identity) and ``lin_r @ B_r`` a receiver's gradient, the score is
    ``sum_t x_s[t] W_O_s B_r^T lin_r[t] = <W_O_s B_r^T, sum_t x_s[t]^T lin_r[t]>``: one GEMM
    over the positions (``X^T @ lin``) and a small product of weights per sender block."""
    lin = g.lin
    assert lin is not None and g.B is not None
    N, R, dh = lin.shape
    w = _width(layout, S)
    M = X[:, :w].T @ lin.reshape(N, R * dh).to(X.dtype)  # [w, R * dh]
    Bt = g.B.reshape(R * dh, d).T.to(X.dtype)  # [d, R * dh]
    out = torch.empty(S, R, dtype=X.dtype, device=X.device)
    for r, m, c0, k, wo in layout:
        if r >= S:
            break
        m = min(m, S - r)
        Mb = M[c0 : c0 + m * k].view(m, k, R, dh)
        K = Bt.expand(m, d, R * dh) if wo is None else torch.matmul(wo[:m], Bt)  # [m, k, R*dh]
        out[r : r + m] = (Mb * K.view(m, k, R, dh)).sum((1, 3))
    return out


@torch.no_grad()
def contract(
    ablated: list[Any],
    clean: list[Any],
    grads: dict[str, Any],
    senders: dict[str, int],
    d: int,
) -> dict[str, torch.Tensor]:
    """Per mask group ``k``: ``(ablated - clean)[:senders[k]] @ grads[k].T``, float64
    ``[senders, receivers]``. ``ablated``/``clean``: sender blocks in the mask's sender order,
    dense ``[rows, N*d]`` or factored heads; ``grads[k]``: ``[R, N*d]`` or a
    :class:`HeadGrads`. A head group's linear part goes through :func:`lin_scores` where that
    is cheaper; everything else is streamed over chunks of positions, float32 products
    accumulated over the chunks in order."""
    top = max(senders[k] for k in grads)
    first = clean[0]
    N = first.shape[1] // d
    layout = _layout(clean, d)
    acc = {
        k: torch.zeros(senders[k], g.receivers if isinstance(g, HeadGrads) else g.shape[0],
                       dtype=first.dtype, device=first.device)
        for k, g in grads.items()
    }  # fmt: skip
    factored = {
        k for k, g in grads.items()
        if isinstance(g, HeadGrads) and g.lin is not None
        and _factored_cheaper(g, _width(layout, senders[k]), senders[k], d)
    }  # fmt: skip
    if factored:
        X = _factors(ablated, clean, N, d, max(_width(layout, senders[k]) for k in factored))
        for k in factored:
            acc[k] += lin_scores(X, layout, grads[k], senders[k], d)
        del X
    step = max(16, CHUNK_BYTES // (4 * d * top))
    for g in grads.values():
        if isinstance(g, HeadGrads):
            g.prepare()
    buf = torch.empty(top, min(step, N) * d, dtype=first.dtype, device=first.device)
    for i in range(0, N, step):
        j = min(N, i + step)
        cols, w = slice(i * d, j * d), (j - i) * d
        write_deltas(ablated, clean, i, j, d, buf, top)
        for key, g in grads.items():
            delta = buf[: senders[key], :w]
            if not isinstance(g, HeadGrads):
                acc[key].addmm_(delta, g[:, cols].to(buf.dtype).T)
                continue
            part = g.block(i, j, terms=False, lin=key not in factored)
            if part is not None:
                acc[key].addmm_(delta, part.flatten(1).to(buf.dtype).T)
            if g.terms:
                acc[key].sub_(g.term_scores(delta.view(len(delta), j - i, d), i, j))
    return {k: v.double() for k, v in acc.items()}
