"""Dense, differentiable edge masks over a model's whole edge graph (ACDC, EAP, EAP-IG).

Every edge of :func:`circuitsteer.edge_graph.full_edges` (sender ``input``, a head's output or an
MLP's output -> receiver a head's q, k or v input, an MLP's input or ``logits``; per
architecture, so with a parallel residual a layer's heads do not feed its MLP) carries a value
``m`` in the mask. In a masked forward each receiver reads

    its own input in this forward + sum over senders s of m[s, r] * (patched_s - current_s)

where ``current_s`` is sender ``s``'s output in this forward and ``patched_s`` its output on the
reference (corrupted) tokens: ``m = 0`` leaves an edge clean, ``m = 1`` patches it, values in
between interpolate, and the logits are differentiable in every ``m``. All zeros give the clean
logits exactly, all ones the corrupted run, and a single edge at 1 equals an edge-restricted
``Patch(Site(sender, to=(receiver,)), corrupted_cache)``.

The forward is batched per receiver layer (auto-circuit's formulation): the sender deltas
``[n_senders, batch*pos*d_model]`` are contracted with the layer's mask block
``[n_senders, n_receivers]`` in one matrix product, the receivers' inputs are normalized as a
stack and each head's q/k/v columns get ``(norm(x + D_r) - norm(x)) @ W_r`` added (exactly zero
for a zero delta). The sender deltas of a forward live in one stacked buffer written without
autograd; with gradients, each receiver group's contraction is a custom autograd function whose
backward is the mask's gradient ``deltas @ grad(D).T`` (each edge's ``grad(receiver input) .
delta``, what EAP computes) and the senders' ``-(m @ grad(D))``: no concatenated copies of the
deltas, no slice or concatenation backwards.

Under grouped-query attention a query head's ``<k>``/``<v>`` edges reach that query head only (as
the engine's edge-restricted changes do): ``k_proj``/``v_proj`` keep their clean, shared output,
each query head's masked k/v delta is projected through its KV group's weights and kept apart, and
the heads whose k/v can change (a nonzero ``<k>``/``<v>`` column, or every head when the mask
requires grad) get their attention recomputed from the group's clean k/v plus their own delta
(rotary on k), replacing their columns of the ``attn_out`` input.

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16)
    >>> clean, corrupt = torch.randint(0, 256, (2, 2, 5))
    >>> mask = EdgeMask(m)
    >>> mask.n_edges == cs.edge_graph.count_full_edges(m.shape)
    True
    >>> mask["a0.h1", "a1.h0", "q"] = 1.0
    >>> lg = run_with_mask(m, clean, mask, corrupt)
    >>> tuple(lg.shape)
    (2, 5, 257)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from circuitsteer import edge_graph as eg
from circuitsteer.errors import InterventionError
from circuitsteer.nodes import CHANNELS, head, mlp, parse_node

EdgeKey = tuple[str, str, "str | None"]


@dataclass(frozen=True)
class _Group:
    """The receivers of one layer's heads (``a{L}``: q, k, v of each head, channel-major), one
    MLP (``m{L}``) or the logits: the first ``senders`` senders (forward order) feed them."""

    key: str
    senders: int
    receivers: int


class EdgeMask:
    """A value on every edge of a model's edge graph, stored per receiver group as
    ``[n_senders_before, n_receivers]`` tensors (``tensors``; leaves an optimizer can train).

    Index with an edge: ``mask["a0.h1", "a2.h3", "q"]``, ``mask["m0", "logits", None]``.

    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=2, d_model=16)
    >>> mask = EdgeMask(m, value=1.0)
    >>> float(mask["input", "m1", None]), mask.tensors["a1"].shape
    (1.0, torch.Size([4, 6]))
    """

    def __init__(
        self,
        model: Any,
        value: float = 0.0,
        requires_grad: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.shape = model.shape
        s = self.shape
        self.n_mlp = int(eg.has_mlps(s))
        per_layer = s.n_heads + self.n_mlp
        groups = []
        for L in range(s.n_layers):
            before = 1 + L * per_layer
            groups.append(_Group(f"a{L}", before, len(CHANNELS) * s.n_heads))
            if self.n_mlp:
                own = 0 if s.parallel_residual else s.n_heads
                groups.append(_Group(mlp(L), before + own, 1))
        groups.append(_Group("logits", 1 + s.n_layers * per_layer, 1))
        self.groups = {g.key: g for g in groups}
        kw = {"dtype": dtype or model.dtype, "device": model.device}
        self.tensors: dict[str, torch.Tensor] = {
            g.key: torch.full((g.senders, g.receivers), float(value), **kw).requires_grad_(
                requires_grad
            )
            for g in groups
        }

    # -- indexing ---------------------------------------------------------------------------
    @property
    def senders(self) -> list[str]:
        """Sender names in forward order (the rows of every group tensor start here)."""
        s = self.shape
        out = ["input"]
        for L in range(s.n_layers):
            out += [head(L, h) for h in range(s.n_heads)] + ([mlp(L)] if self.n_mlp else [])
        return out

    def sender_index(self, name: str) -> int:
        n = parse_node(name)
        per_layer = self.shape.n_heads + self.n_mlp
        if n.kind == "input":
            return 0
        if n.kind == "head":
            return 1 + (n.layer or 0) * per_layer + (n.head or 0)
        if n.kind == "mlp" and self.n_mlp:
            return 1 + (n.layer or 0) * per_layer + self.shape.n_heads
        raise InterventionError(
            f"{name} is not a sender of the edge graph", fix="senders are input, heads and MLPs"
        )

    def locate(self, edge: EdgeKey) -> tuple[str, int, int]:
        """``(group key, sender row, receiver column)`` of an edge."""
        src, dst, ch = edge
        d = parse_node(dst)
        if d.kind == "head":
            if ch not in CHANNELS:
                raise InterventionError(
                    f"edge {src} -> {dst} needs a channel", fix="pass 'q', 'k' or 'v'"
                )
            key, col = f"a{d.layer}", CHANNELS.index(ch) * self.shape.n_heads + (d.head or 0)
        elif d.kind in ("mlp", "logits") and ch is None:
            key, col = (mlp(d.layer or 0) if d.kind == "mlp" else "logits"), 0
        else:
            raise InterventionError(
                f"{dst}<{ch}> is not a receiver of the edge graph",
                fix="receivers are heads' q/k/v inputs, MLPs and logits",
            )
        g = self.groups.get(key)
        row = self.sender_index(src)
        if g is None or row >= g.senders:
            raise InterventionError(
                f"no edge {src} -> {dst} in this model's edge graph",
                fix="the sender must come before the receiver (parallel residual: a layer's heads "
                "do not feed its MLP)",
            )
        return key, row, col

    def __getitem__(self, edge: EdgeKey) -> torch.Tensor:
        key, row, col = self.locate(edge)
        return self.tensors[key][row, col]

    def __setitem__(self, edge: EdgeKey, value: float) -> None:
        key, row, col = self.locate(edge)
        with torch.no_grad():
            self.tensors[key][row, col] = value

    @property
    def n_edges(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def parameters(self) -> list[torch.Tensor]:
        return list(self.tensors.values())

    def fill_(self, value: float) -> EdgeMask:
        with torch.no_grad():
            for t in self.tensors.values():
                t.fill_(value)
        return self

    def edges(self) -> Iterator[tuple[EdgeKey, float]]:
        """Every edge and its value, in :func:`~circuitsteer.edge_graph.full_edges` order."""
        flat = {k: t.detach().cpu() for k, t in self.tensors.items()}
        for e in eg.full_edges(self.shape):
            key, row, col = self.locate(e)
            yield e, float(flat[key][row, col])

    # -- circuits ---------------------------------------------------------------------------
    @classmethod
    def from_circuit(
        cls, model: Any, circuit: Any, inside: float = 0.0, outside: float = 1.0
    ) -> EdgeMask:
        """The mask that runs ``circuit``: its edges ``inside`` (0: clean), every other edge
        ``outside`` (1: patched). Edge positions are ignored (the mask acts at all positions)."""
        mask = cls(model, value=outside)
        for src, dst, ch in circuit.edge_keys():
            mask[src, dst, ch] = inside
        return mask

    def to_circuit(self, threshold: float = 0.5, name: str = "from-mask", model: Any = None) -> Any:
        """The circuit of the edges whose value is below ``threshold`` (the edges left clean),
        with their end nodes."""
        from circuitsteer.graph import Circuit

        c = Circuit(name, model=model, shape=self.shape)
        for (src, dst, ch), v in self.edges():
            if v < threshold:
                for n in (src, dst):
                    if n not in c:
                        c.add_node(n)
                c.add_edge(src, dst, channel=ch)
        return c


class _SenderGrads:
    """The senders' gradients of one masked forward, accumulated across receiver groups in one
    ``[n, B*P*d]`` buffer: each group's backward adds ``-(m @ grad(D))`` into its rows in place
    (one ``addmm_``) and the group that first reads a block of sender rows hands them to autograd
    as views, instead of every group returning its own copy for autograd to sum."""

    def __init__(self) -> None:
        self.S: torch.Tensor | None = None
        self.low = 0  # first row handed back in this backward pass


class _MaskedSum(torch.autograd.Function):
    """``D = m.T @ deltas``: each receiver's mask-weighted sum of the sender deltas.

    ``deltas`` ``[n, B*P*d]`` is the forward's stacked buffer of ``reference - output`` rows,
    written without autograd; ``outs`` are sender outputs (the buffer's rows, in order), passed
    only to route gradients. The backward is two matrix products and no copies: the mask's
    gradient ``deltas @ grad(D).T`` (each edge's ``grad(receiver input) . delta``) and the
    senders' ``-(m @ grad(D))``. With ``state`` (a :class:`_SenderGrads`), ``outs`` are the
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
        state: _SenderGrads | None,
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


class _Hooks:
    """Hooks for one masked forward (``mask`` given) or one recording of sender outputs."""

    def __init__(self, model: Any, mask: EdgeMask | None, ref: list[torch.Tensor] | None) -> None:
        self.model, self.arch, self.mask, self.ref = model, model.arch, mask, ref
        self.blocks: list[torch.Tensor] = []  # recorded sender outputs, [n, B*P*d] each
        self.outs: list[torch.Tensor] = []  # sender outputs of a masked forward (for autograd)
        self.handles: list[Any] = []
        self.diff: dict[int, torch.Tensor] = {}
        self.buf: torch.Tensor | None = None
        self.filled = 0
        self.claimed = 0  # sender rows whose gradient a group already hands back
        self.sgrads = _SenderGrads()
        s = model.shape
        # grouped-query attention: per layer the attention kwargs, the q/k/v module outputs
        # (q with its deltas, k/v clean) and each query head's own k/v delta [H, B, P, dh]
        self.gqa = mask is not None and s.grouped_kv
        self.attn_kw: dict[int, tuple[Any, Any]] = {}
        self.proj: dict[tuple[int, str], torch.Tensor] = {}
        self.kv_delta: dict[tuple[int, str], torch.Tensor] = {}
        try:
            self._pre("block", 0, self._input)
            for L in range(s.n_layers):
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
            torch.sub(self.ref[len(self.outs)], out, out=self.buf[a : self.filled])
        self.outs.append(out)

    def _input(self, module, args, kwargs):
        self.blocks, self.outs, self.diff, self.buf, self.filled = [], [], {}, None, 0
        self.claimed, self.sgrads = 0, _SenderGrads()
        self.attn_kw, self.proj, self.kv_delta = {}, {}, {}
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
            self._sender(torch.bmm(zh, w_o).reshape(s.n_heads, -1))
            return None if z is z_in else (z, *args[1:])

        return hook

    def _attn_kw(self, L: int):
        def hook(module, args, kwargs):
            self.attn_kw[L] = (kwargs.get("position_embeddings"), kwargs.get("attention_mask"))

        return hook

    def _gqa_heads(self, L: int, z: torch.Tensor) -> torch.Tensor:
        """``z`` with the attention of every query head whose k/v can differ from its group's
        recomputed from its own k/v (the group's clean k/v plus the head's own delta)."""
        assert self.mask is not None
        s, arch = self.model.shape, self.arch
        H, dh = s.n_heads, s.d_head
        m = self.mask.tensors[f"a{L}"]
        if torch.is_grad_enabled() and m.requires_grad:
            heads = list(range(H))
        else:
            with torch.no_grad():
                nz = (m[:, H:] != 0).any(0)
                heads = (nz[:H] | nz[H:]).nonzero().flatten().tolist()
        if not heads:
            return z
        B, P = z.shape[:2]
        idx = torch.tensor(heads, device=z.device)

        def stack(c: str) -> torch.Tensor:  # [n, B, P, dh]
            out = self.proj[(L, c)]
            t = torch.stack([out[..., arch.qkv_cols(c, h)] for h in heads])
            d = self.kv_delta.get((L, c))
            return t if d is None else t + d.index_select(0, idx)

        pos_emb, amask = self.attn_kw[L]
        q = arch.rotary(stack("q"), pos_emb)
        k = arch.rotary(stack("k"), pos_emb)
        v = stack("v")
        scores = (q @ k.transpose(-1, -2)) * arch.attn_scale(
            self.model.module(arch.path("attn", L))
        )
        if amask is None:
            causal = torch.ones(P, P, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        else:
            am = amask[:, 0, :, -P:]
            if am.dtype == torch.bool:
                scores = scores.masked_fill(~am, torch.finfo(scores.dtype).min)
            else:
                scores = scores + am
        sm_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        zh = torch.softmax(scores, dim=-1, dtype=sm_dtype).to(v.dtype) @ v  # [n, B, P, dh]
        z = z.clone()
        z.view(B, P, H, dh)[:, :, heads] = zh.permute(1, 2, 0, 3)
        return z

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
                D = _MaskedSum.apply(m, self.buf[:n], self.sgrads, c, *outs)
            else:
                D = _MaskedSum.apply(m, self.buf[:n], None, 0, *outs)
        else:
            D = m.T.to(self.buf.dtype) @ self.buf[:n]
        return D.view(m.shape[1], *like.shape)

    def _ln1(self, L: int):
        ln = self.model.module(self.arch.path("ln1", L))

        def hook(module, args):
            x = args[0]
            D = self._delta(f"a{L}", x)
            # the change of each receiver's normalized input: exactly 0 where D is 0
            self.diff[L] = (ln.forward(x.unsqueeze(0) + D) - ln.forward(x).unsqueeze(0)).flatten(
                1, -2
            )

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
            idx = cols.to(out.device)
            W = self.arch.in_cols(module, idx if span is None else span)
            W = W.reshape(-1, R, dh).transpose(0, 1)  # [R, d, dh]
            contrib = torch.bmm(self.diff[L][r0 : r0 + R], W)  # [R, BP, dh]
            if self.gqa:
                return self._gqa_qkv(L, channels, out, idx, contrib)
            contrib = contrib.transpose(0, 1).reshape(*out.shape[:-1], R * dh)
            if whole and out.shape[-1] == len(cols):
                return out + contrib  # the same sums as index_add, without its index copies
            return out.index_add(-1, idx, contrib)

        return hook

    def _gqa_qkv(
        self,
        L: int,
        channels: tuple[str, ...],
        out: torch.Tensor,
        idx: torch.Tensor,
        contrib: torch.Tensor,
    ) -> torch.Tensor:
        """Grouped-query attention: q columns get their deltas as usual; k/v columns are shared
        by a KV group, so they stay clean and each query head's own delta is kept apart."""
        H, dh = self.model.shape.n_heads, self.model.shape.d_head
        new = out
        for i, ch in enumerate(channels):
            part = contrib[i * H : (i + 1) * H]  # [H, BP, dh]
            if ch == "q":
                q_idx = idx[i * H * dh : (i + 1) * H * dh]
                new = new.index_add(-1, q_idx, part.transpose(0, 1).reshape(*out.shape[:-1], -1))
            else:
                self.kv_delta[(L, ch)] = part.view(H, *out.shape[:-1], dh)
        for ch in channels:
            self.proj[(L, ch)] = new if ch == "q" else out
        return new

    def _ln2(self, L: int):
        def hook(module, args):
            x = args[0]
            return (x + self._delta(f"m{L}", x)[0],)

        return hook

    def _final(self, module, args):
        x = args[0]
        return (x + self._delta("logits", x)[0],)


@dataclass
class SenderOutputs:
    """Every sender's output on some tokens (the patched values of a masked forward), as
    ``[n, batch*pos*d_model]`` blocks in forward order; ``tokens`` their token batch."""

    tokens: torch.Tensor
    blocks: list[torch.Tensor]


def sender_outputs(model: Any, tokens: torch.Tensor) -> SenderOutputs:
    """Record every sender's output on ``tokens`` (one forward, no autograd); reuse it across
    many masked forwards with the same reference."""
    hooks = _Hooks(model, None, None)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        hooks.remove()
    return SenderOutputs(tokens, hooks.blocks)


def run_with_mask(
    model: Any,
    tokens: torch.Tensor,
    mask: EdgeMask,
    reference: torch.Tensor | SenderOutputs,
    grad: bool | None = None,
) -> torch.Tensor:
    """Logits of a forward on ``tokens`` where every edge reads ``mask``'s share of its sender's
    patched output (``reference``: corrupted tokens of the same shape, or their
    :func:`sender_outputs`). ``grad``: keep the graph (default: when a mask tensor requires
    grad), so ``torch.autograd.grad(metric, mask.parameters())`` gives every edge's gradient.

    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=1, n_heads=2, d_model=16)
    >>> a, b = torch.randint(0, 256, (2, 1, 4))
    >>> torch.equal(run_with_mask(m, a, EdgeMask(m), b), m(a))
    True
    """
    if mask.shape != model.shape:
        raise InterventionError(
            f"the mask is for {mask.shape.describe()}, the model is {model.shape.describe()}",
            fix="build the mask with EdgeMask(model)",
        )
    ref = reference if isinstance(reference, SenderOutputs) else sender_outputs(model, reference)
    if ref.tokens.shape != tokens.shape:
        raise InterventionError(
            f"reference tokens are {tuple(ref.tokens.shape)} but the tokens are "
            f"{tuple(tokens.shape)}",
            fix="patched sender outputs are matched example by example: pass tokens of one shape",
        )
    if grad is None:
        grad = any(t.requires_grad for t in mask.tensors.values())
    hooks = _Hooks(model, mask, [b.to(model.device) for b in ref.blocks])
    try:
        with torch.set_grad_enabled(grad):
            return model(tokens)
    finally:
        hooks.remove()
