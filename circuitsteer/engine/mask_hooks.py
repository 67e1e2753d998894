"""The forward hooks of a masked forward (:func:`circuitsteer.engine.masks.run_with_mask`) and
of a recording of sender outputs (:func:`circuitsteer.engine.masks.sender_outputs`): senders'
outputs go into one delta buffer, receivers' inputs get their mask-weighted deltas, and under
grouped-query attention the heads whose k/v can change get their attention recomputed.

Without autograd only *active* receivers are computed: a receiver whose mask column is all zero
reads its input unchanged, so its group skips it (a group with no active receiver installs no
change at all, and a forward whose lower layers are all inactive is the plain forward there),
and receivers of a layer whose columns are equal share one computed, normalized input,
projected through their weights in one product (the projection replaces the module's output
columns). A receiver whose every incoming edge is patched (a column of ones: most of ACDC's
receivers above the one under test) reads the reference's ablated input ``R``
(:mod:`circuitsteer.engine.mask_ablated`): its q/k/v columns (or the MLP's, the logits' input)
come from the cache, computed once per prefix. In the first changed layer (a resumed forward's
start) every input is the clean forward's, so each distinct column's normalized input and each
receiver's projection are computed on their own and cached by column: between ACDC's tests
only the column under test is new. The heads' deltas are written by one ``baddbmm``.
A forward may also *resume* at a layer (:class:`Resume`): the residual entering that block and
the delta rows of the senders below it come from a recording of the same forward
(:func:`circuitsteer.engine.masks.mask_prefix`), the blocks below are not run. The active
receivers' q/k/v columns live in :mod:`circuitsteer.engine.mask_active`, grouped-query
attention's per-head k/v in :mod:`circuitsteer.engine.mask_gqa` (mixins of :class:`MaskHooks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from circuitsteer import edge_graph as eg
from circuitsteer.engine.mask_ablated import AblatedCache
from circuitsteer.engine.mask_active import ActiveReceivers, Plan, key_of, normed_inputs
from circuitsteer.engine.mask_autograd import MaskedSum, SenderGrads
from circuitsteer.engine.mask_gqa import GQAHeads
from circuitsteer.nodes import CHANNELS

if TYPE_CHECKING:
    from circuitsteer.engine.masks import EdgeMask


def first_changed_layer(mask: EdgeMask) -> int:
    """The first layer with a nonzero mask column (``n_layers``: only the logits): below it a
    masked forward is the plain one (a resumed forward starts there)."""
    for key, t in mask.tensors.items():  # receiver groups in forward order
        if bool(t.any()):
            return mask.shape.n_layers if key == "logits" else int(key[1:])
    return mask.shape.n_layers


@dataclass
class Resume:
    """Where a no-grad masked forward starts: block ``layer`` (``n_layers``: the final norm)
    reads ``resid``; ``buf`` (the forward's delta buffer, reused) holds the delta rows of the
    ``rows`` senders (``blocks`` sender blocks) below it."""

    layer: int
    resid: torch.Tensor
    buf: torch.Tensor
    rows: int
    blocks: int
    # (group key, rows) -> (mask rows, their product with the delta rows below the start)
    partial: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]


class MaskHooks(ActiveReceivers, GQAHeads):
    """Hooks for one masked forward (``mask`` given) or one recording of sender outputs."""

    def __init__(
        self,
        model: Any,
        mask: EdgeMask | None,
        ref: list[torch.Tensor] | None,
        resume: Resume | None = None,
        cache: AblatedCache | None = None,
    ) -> None:
        self.model, self.arch, self.mask, self.ref = model, model.arch, mask, ref
        # the ablated inputs (mask_ablated): a prefix's, kept across forwards, or this one's
        self.cache = cache if cache is not None else AblatedCache()
        self.plan: dict[int, Plan | None] = {}
        self.blocks: list[torch.Tensor] = []  # recorded sender outputs, [n, B*P*d] each
        self.outs: list[torch.Tensor] = []  # sender outputs of a masked forward (for autograd)
        self.handles: list[Any] = []
        self.diff: dict[int, torch.Tensor | None] = {}
        self.buf: torch.Tensor | None = None
        self.filled = 0
        self.n_blocks = 0  # sender blocks written (the reference block the next one reads)
        self.resume = resume
        # the first changed layer (a resumed forward's start): its receivers' inputs are clean
        self.first = -1 if mask is None else first_changed_layer(mask)
        if resume is not None:
            self.first = resume.layer
        per_layer = model.shape.n_heads + int(eg.has_mlps(model.shape))
        self.cuts = [1 + L * per_layer for L in range(1, model.shape.n_layers + 1)]
        self.claimed = 0  # sender rows whose gradient a group already hands back
        self.sgrads = SenderGrads()
        s = model.shape
        # grouped-query attention: per layer the attention kwargs, the q/k/v module outputs
        # (q with its deltas, k/v clean) and each query head's own k/v delta [H, B, P, dh]
        self.gqa = mask is not None and s.grouped_kv
        self.attn_kw: dict[int, tuple[Any, Any]] = {}
        self.proj: dict[tuple[int, str], torch.Tensor] = {}
        self.kv_delta: dict[tuple[int, str], torch.Tensor] = {}
        start = 0 if resume is None else resume.layer
        try:
            if resume is None:
                self._pre("block", 0, self._input)
            elif start < s.n_layers:
                self._pre("block", start, self._resume)
            else:
                self._pre("final_norm", None, self._resume_final)
            for L in range(start, s.n_layers):
                if self.gqa:
                    self._pre("attn", L, self._attn_kw(L))
                self._pre("attn_out", L, self._heads(L))
                if eg.has_mlps(s):
                    self._post("mlp", L, self._mlp(L))
                if mask is not None:
                    self._pre("ln1", L, self._ln1(L))
                    for role, chs in self.arch.qkv_modules().items():
                        self._post(role, L, self._qkv(L, chs))
                    if eg.has_mlps(s):
                        self._pre("ln2", L, self._ln2(L))
            if mask is not None:
                self._pre("final_norm", None, self._final)
        except BaseException:
            self.remove()
            raise

    def _pre(self, role: str, layer: int | None, fn: Any) -> None:
        mod = self.model.module(self.arch.path(role, layer))
        kw = role in ("block", "attn")
        self.handles.append(mod.register_forward_pre_hook(fn, with_kwargs=kw))

    def _reset(self) -> None:
        self.blocks, self.outs, self.diff, self.buf, self.plan = [], [], {}, None, {}
        self.filled = self.n_blocks = 0
        self.claimed, self.sgrads = 0, SenderGrads()
        self.attn_kw, self.proj, self.kv_delta = {}, {}, {}

    def _start(self) -> torch.Tensor:
        """Reset the forward's state at a resumed start; returns the residual to feed."""
        r = self.resume
        assert r is not None
        self._reset()
        self.buf, self.filled, self.n_blocks = r.buf, r.rows, r.blocks
        return r.resid

    def _resume(self, module, args, kwargs):
        x = self._start()
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    def _resume_final(self, module, args):
        return (self._start(), *args[1:])

    def _post(self, role: str, layer: int, fn: Any) -> None:
        self.handles.append(
            self.model.module(self.arch.path(role, layer)).register_forward_hook(fn)
        )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # -- senders ----------------------------------------------------------------------------
    def _sender(self, out: torch.Tensor) -> None:
        """``out`` ``[n, B*P*d]``: record it, or write its delta against the reference into the
        forward's one preallocated buffer (without autograd, so no receiver concatenates)."""
        if self.ref is None:
            self.blocks.append(out)
            return
        assert self.buf is not None
        a = self.filled
        self.filled = a + out.shape[0]
        with torch.no_grad():
            torch.sub(self.ref[self.n_blocks], out, out=self.buf[a : self.filled])
        self.n_blocks += 1
        if torch.is_grad_enabled():
            self.outs.append(out)

    def _heads_delta(self, zh: torch.Tensor, w_o: torch.Tensor) -> None:
        """No grad: the heads' deltas ``ref - z_h @ W_O[h]`` written into the buffer by one
        ``baddbmm`` (no head outputs allocated, no separate subtraction pass)."""
        assert self.buf is not None
        H, a = zh.shape[0], self.filled
        self.filled = a + H
        ref = self.ref[self.n_blocks].view(H, zh.shape[1], -1)  # type: ignore[index]
        torch.baddbmm(ref, zh, w_o, alpha=-1, out=self.buf[a : self.filled].view_as(ref))
        self.n_blocks += 1

    def _input(self, module, args, kwargs):
        self._reset()
        x = args[0] if args else kwargs["hidden_states"]
        if self.ref is not None:
            n = sum(r.shape[0] for r in self.ref)
            self.buf = torch.empty(n, x.numel(), dtype=x.dtype, device=x.device)
        self._sender(x.reshape(1, -1))

    def _heads(self, L: int):
        s = self.model.shape
        w_o = self.arch.out_rows(
            self.model.module(self.arch.path("attn_out", L)), slice(0, s.n_heads * s.d_head)
        ).reshape(s.n_heads, s.d_head, -1)

        def hook(module, args):
            z = args[0]
            z_in = z
            if self.gqa:
                z = self._gqa_heads(L, z)
            B, P = z.shape[:2]
            zh = z.reshape(B * P, s.n_heads, s.d_head).transpose(0, 1)  # [H, BP, dh]
            if self.ref is not None and not torch.is_grad_enabled():
                self._heads_delta(zh, w_o)
            else:
                self._sender(torch.bmm(zh, w_o).reshape(s.n_heads, -1))
            return None if z is z_in else (z, *args[1:])

        return hook

    def _attn_kw(self, L: int):
        def hook(module, args, kwargs):
            self.attn_kw[L] = (kwargs.get("position_embeddings"), kwargs.get("attention_mask"))

        return hook

    def _mlp(self, L: int):
        def hook(module, args, out):
            self._sender(out.reshape(1, -1))

        return hook

    # -- receivers --------------------------------------------------------------------------
    def _delta(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """``[R, *like.shape]``: each receiver's mask-weighted sum of sender deltas."""
        assert self.mask is not None and self.buf is not None
        m = self.mask.tensors[key]
        n = m.shape[0]
        if torch.is_grad_enabled():
            c = self.claimed
            own = n > c  # the first group to read rows c:n hands back their gradient
            outs, k = [], 0
            for o in self.outs:
                if k == n:
                    break
                if k >= c or not own:
                    outs.append(o)
                k += o.shape[0]
            assert k == n, "a receiver group ends between a sender's rows"
            if own:
                self.claimed = n
                D = MaskedSum.apply(m, self.buf[:n], self.sgrads, c, *outs)
            else:
                D = MaskedSum.apply(m, self.buf[:n], None, 0, *outs)
        else:
            D = m.T.to(self.buf.dtype) @ self.buf[:n]
        return D.view(m.shape[1], *like.shape)

    def _ln1(self, L: int):
        ln = self.model.module(self.arch.path("ln1", L))

        def hook(module, args):
            x = args[0]
            if torch.is_grad_enabled() or self.gqa:
                D = self._delta(f"a{L}", x)
                # the change of each receiver's normalized input: exactly 0 where D is 0
                self.diff[L] = (
                    ln.forward(x.unsqueeze(0) + D) - ln.forward(x).unsqueeze(0)
                ).flatten(1, -2)
                return
            self.plan[L] = None
            assert self.mask is not None and self.buf is not None
            m = self.mask.tensors[f"a{L}"]
            nz = m != 0
            if not bool(nz.any()):  # no receiver of this layer reads a change
                return
            n, buf = m.shape[0], self.buf
            ones = (m == 1).all(0)  # every edge patched: R, the same in every forward
            plan = Plan(ones=ones.nonzero().flatten())
            xi = (nz.any(0) & ~ones).nonzero().flatten()
            if xi.numel():
                # receivers with equal columns read equal inputs: x + u.T @ deltas once per
                # distinct column u, normalized
                uniq, inv = torch.unique(m[:, xi], dim=1, return_inverse=True)
                mt = uniq.T.to(buf.dtype)
                if L == self.first:  # clean inputs: one column at a time, cached by column
                    plan.first = True

                    def normed(i: int) -> torch.Tensor:
                        y = torch.addmm(x.reshape(1, -1), mt[i : i + 1], buf[:n])
                        return ln.forward(y.view_as(x)).flatten(0, -2)

                    keys = [("in", L, key_of(u)) for u in mt]
                    stack: Any = [
                        self.cache.get(k, lambda i=i: normed(i), sweep=True)
                        for i, k in enumerate(keys)
                    ]
                    plan.x = (xi, inv, (stack, keys))
                else:
                    plan.x = (xi, inv, (normed_inputs(ln, x, mt, buf[:n]), None))
            if plan.ones.numel():
                R = self._ablated(f"a{L}", n)
                plan.normed = self.cache.get(("ln1", L), lambda: ln.forward(R.view_as(x)))
            self.plan[L] = plan

        return hook

    def _qkv(self, L: int, channels: tuple[str, ...]):
        s = self.model.shape
        H, dh = s.n_heads, s.d_head
        r0 = CHANNELS.index(channels[0]) * H
        R = len(channels) * H
        cols = torch.cat(
            [
                torch.arange(c.start, c.stop)
                for ch in channels
                for c in (self.arch.qkv_cols(ch, h) for h in range(H))
            ]
        )

        # GPT-2's fused c_attn: the receivers' columns are the whole output, in order
        whole = torch.equal(cols, torch.arange(len(cols)))
        # contiguous columns: take the weights as a view (no index copy, no index backward)
        c0 = int(cols[0])
        span: Any = (
            slice(c0, c0 + len(cols)) if torch.equal(cols - c0, torch.arange(len(cols))) else None
        )

        def hook(module, args, out):
            if not torch.is_grad_enabled() and not self.gqa:
                return self._qkv_active(L, module, out, r0, R, cols, span)
            diff = self.diff[L]
            assert diff is not None  # the layer's input differs (the group has a receiver)
            idx = cols.to(out.device)
            W = self.arch.in_cols(module, idx if span is None else span)
            W = W.reshape(-1, R, dh).transpose(0, 1)  # [R, d, dh]
            contrib = torch.bmm(diff[r0 : r0 + R], W)  # [R, BP, dh]
            if self.gqa:
                return self._gqa_qkv(L, channels, out, idx, contrib)
            contrib = contrib.transpose(0, 1).reshape(*out.shape[:-1], R * dh)
            if whole and out.shape[-1] == len(cols):
                return out + contrib  # the same sums as index_add, without its index copies
            return out.index_add(-1, idx, contrib)

        return hook

    def _column(self, key: str, x: torch.Tensor) -> torch.Tensor | None:
        """A one-receiver group's input (an MLP's, the logits'): ``x + m.T @ deltas``, or None
        (unchanged) when the column is all zero. Without autograd the product is accumulated
        one sender layer at a time (input and layer 0's senders first), so a resumed forward
        takes the sum over the senders below its start from the prefix's cache: the same
        additions in the same order."""
        assert self.mask is not None and self.buf is not None
        m = self.mask.tensors[key]
        if torch.is_grad_enabled():
            return x + self._delta(key, x)[0]
        if not bool(m.any()):
            return None
        n, buf, r = m.shape[0], self.buf, self.resume
        if bool((m == 1).all()):  # every edge patched: R, the same in every forward
            return self._ablated(key, n).view_as(x)
        mt = m.T.to(buf.dtype)
        S, a = None, 0
        hit = None if r is None else r.partial.get((key, r.rows))
        if hit is not None and torch.equal(hit[0], m[: r.rows]):
            S, a = hit[1], r.rows
        for c in [c for c in self.cuts if c < n] + [n]:
            if c <= a:
                continue
            S = mt[:, a:c] @ buf[a:c] if S is None else torch.addmm(S, mt[:, a:c], buf[a:c])
            a = c
            if r is not None and c == r.rows:  # the sum below the start: cache it
                r.partial[(key, c)] = (m[:c].clone(), S)
        assert S is not None
        return x + S.view_as(x)

    def _ln2(self, L: int):
        def hook(module, args):
            x = self._column(f"m{L}", args[0])
            return None if x is None else (x,)

        return hook

    def _final(self, module, args):
        x = self._column("logits", args[0])
        return None if x is None else (x,)
