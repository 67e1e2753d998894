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
from circuitsteer.engine.branch import skipping_blocks
from circuitsteer.engine.mask_ablated import AblatedCache
from circuitsteer.engine.mask_hooks import MaskHooks, Resume, first_changed_layer
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
        ``outside`` (1: patched); ``circuit.to_mask(model)``, which this calls."""
        return circuit.to_mask(model, inside=inside, outside=outside)

    def to_circuit(self, threshold: float = 0.5, name: str = "from-mask", model: Any = None) -> Any:
        """The circuit of the edges whose value is below ``threshold`` (the edges left clean),
        with their end nodes: ``Circuit.from_mask(mask)``, which this calls."""
        from circuitsteer.circuit import Circuit  # the circuit layer sits above the engine

        return Circuit.from_mask(self, threshold, name=name, model=model)


@dataclass
class SenderOutputs:
    """Every sender's output on some tokens (the patched values of a masked forward), as
    ``[n, batch*pos*d_model]`` blocks in forward order; ``tokens`` their token batch."""

    tokens: torch.Tensor
    blocks: list[torch.Tensor]


def sender_outputs(model: Any, tokens: torch.Tensor) -> SenderOutputs:
    """Record every sender's output on ``tokens`` (one forward, no autograd); reuse it across
    many masked forwards with the same reference."""
    hooks = MaskHooks(model, None, None)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        hooks.remove()
    return SenderOutputs(tokens, hooks.blocks)


class MaskPrefix:
    """What a no-grad masked forward on ``tokens`` against ``reference`` can start from: the
    residual entering every block (and the final norm) and every sender's delta row when no
    edge is patched (:func:`mask_prefix`). A layer all of whose receivers below are clean
    computes exactly this (a zero mask column adds nothing, nothing is computed for it), so
    :func:`run_with_mask` given a prefix starts at the first layer with a nonzero mask column,
    skipping the blocks below: the same operations on the same values as the whole forward.
    One prefix serves one forward at a time (its delta buffer is reused)."""

    def __init__(self, model: Any, tokens: torch.Tensor, reference: SenderOutputs) -> None:
        self.tokens, self.reference = tokens, reference
        s = model.shape
        mask = EdgeMask(model)
        resid: dict[int, torch.Tensor] = {}
        kind: dict[str, bool] = {}

        def grab(layer: int):
            def hook(module, args, kwargs=None):
                resid[layer] = args[0] if args else (kwargs or {})["hidden_states"]

            return hook

        def out_kind(module, args, out):
            kind["tuple"] = isinstance(out, tuple)

        hooks = MaskHooks(model, mask, [b.to(model.device) for b in reference.blocks])
        arch = model.arch
        handles = [
            model.module(arch.path("block", L)).register_forward_pre_hook(grab(L), with_kwargs=True)
            for L in range(1, s.n_layers)
        ]
        handles.append(model.module(arch.path("final_norm")).register_forward_pre_hook(
            grab(s.n_layers)))  # fmt: skip
        handles.append(model.module(arch.path("block", 0)).register_forward_hook(out_kind))
        try:
            with torch.no_grad():
                self.logits = model(tokens)
        finally:
            hooks.remove()
            for h in handles:
                h.remove()
        assert hooks.buf is not None
        self.as_tuple = bool(kind.get("tuple", False))
        self.clean_buf = hooks.buf  # delta rows of the unpatched forward
        self.buf = hooks.buf.clone()  # the working buffer resumed forwards write into
        self.dirty = self.buf.shape[0]  # rows from here on may differ from clean_buf
        self.resid = resid
        self.n_mlp = mask.n_mlp
        self.per_layer = s.n_heads + mask.n_mlp  # sender rows per layer
        self.n_layers = s.n_layers
        self.order = list(mask.tensors)  # receiver groups in forward order
        self.partial: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # every receiver group's ablated input, its norm and projections (mask_ablated)
        self.ablated = AblatedCache()

    def start(self, mask: EdgeMask) -> int:
        """The first layer with a nonzero mask column (``n_layers``: only the logits)."""
        return first_changed_layer(mask)

    def resume(self, layer: int) -> Resume:
        """The start at ``layer``, its delta rows restored to the clean forward's."""
        blocks = 1 + layer * (1 + self.n_mlp)  # input, then per layer the heads and the MLP
        rows = 1 + layer * self.per_layer
        if self.dirty < rows:
            self.buf[self.dirty : rows] = self.clean_buf[self.dirty : rows]
        self.dirty = rows
        return Resume(layer, self.resid[layer], self.buf, rows, blocks, self.partial)


def mask_prefix(
    model: Any, tokens: torch.Tensor, reference: torch.Tensor | SenderOutputs
) -> MaskPrefix:
    """Record the unpatched forward's state on ``tokens`` against ``reference`` (corrupted
    tokens or their :func:`sender_outputs`) once, so that :func:`run_with_mask` forwards with
    it start at the mask's first changed layer (ACDC: the receiver under test).

    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=3, n_heads=2, d_model=16)
    >>> a, b = torch.randint(0, 256, (2, 2, 5))
    >>> p, mask = mask_prefix(m, a, b), EdgeMask(m)
    >>> mask["a1.h0", "a2.h1", "k"] = 1.0
    >>> torch.equal(run_with_mask(m, a, mask, p), run_with_mask(m, a, mask, b))
    True
    """
    ref = reference if isinstance(reference, SenderOutputs) else sender_outputs(model, reference)
    return MaskPrefix(model, tokens, ref)


def run_with_mask(
    model: Any,
    tokens: torch.Tensor,
    mask: EdgeMask,
    reference: torch.Tensor | SenderOutputs | MaskPrefix,
    grad: bool | None = None,
) -> torch.Tensor:
    """Logits of a forward on ``tokens`` where every edge reads ``mask``'s share of its sender's
    patched output (``reference``: corrupted tokens of the same shape, or their
    :func:`sender_outputs`, or a :func:`mask_prefix` of ``tokens`` against them: then a no-grad
    forward starts at the first layer with a nonzero mask column, from the recorded residual).
    ``grad``: keep the graph (default: when a mask tensor requires grad), so
    ``torch.autograd.grad(metric, mask.parameters())`` gives every edge's gradient.

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
    prefix = None
    if isinstance(reference, MaskPrefix):
        prefix = reference
        if prefix.tokens is not tokens and not torch.equal(prefix.tokens, tokens):
            raise InterventionError(
                "the mask prefix was recorded on other tokens",
                fix="record it with mask_prefix(model, tokens, reference) for these tokens",
            )
        ref = prefix.reference
    elif isinstance(reference, SenderOutputs):
        ref = reference
    else:
        ref = sender_outputs(model, reference)
    if ref.tokens.shape != tokens.shape:
        raise InterventionError(
            f"reference tokens are {tuple(ref.tokens.shape)} but the tokens are "
            f"{tuple(tokens.shape)}",
            fix="patched sender outputs are matched example by example: pass tokens of one shape",
        )
    if grad is None:
        grad = any(t.requires_grad for t in mask.tensors.values())
    resume = None
    if prefix is not None and not grad:
        start = prefix.start(mask)
        resume = prefix.resume(start) if start > 0 else None
    cache = prefix.ablated if prefix is not None else None
    hooks = MaskHooks(model, mask, [b.to(model.device) for b in ref.blocks], resume, cache)
    try:
        with torch.set_grad_enabled(grad):
            if resume is None:
                return model(tokens)
            with skipping_blocks(model, resume.layer, prefix.as_tuple if prefix else False):
                return model(tokens)
    finally:
        hooks.remove()
        if cache is not None:
            cache.sweep()
