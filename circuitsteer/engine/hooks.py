"""Plain torch hooks on the raw HF modules that carry out compiled edits and captures.

Where each slot lives comes from the model's architecture adapter (``model.arch``: module paths
per role, the q/k/v columns of a head, how to project a normalized input onto them, a head's
output rows, the rotary embedding). Only the hooks a plan needs are installed, so an
intervention at one head costs one small hook. ``HookSet.remove()`` takes every handle off;
``engine.apply`` calls it in a ``finally``.

A head's q/k/v input edit (or an edge delta into it) recomputes that head's projection columns
from its own modified input. Under grouped-query attention k and v columns are shared by a group
of query heads, so a change to one query head's k or v input instead recomputes that head's
attention from its own k/v and replaces its output ``z``: the other heads of the group see the
clean k/v, exactly.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from circuitsteer.engine.plan import Edit, ReceiverKey, Slot
from circuitsteer.errors import InterventionError

HeadChannel = tuple[int, str]
Span = tuple[int, int]  # rows [start, stop) of the batch


def _spans(rows: list[slice]) -> list[Span]:
    """Merge row ranges into disjoint sorted spans."""
    out: list[Span] = []
    for a, b in sorted((r.start, r.stop) for r in rows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


class _Group:
    """Heads' q/k/v inputs that share one effective input (the same edge deltas, or one edit),
    and the rows where it differs from the clean input: only those rows are recomputed, so
    the other rows (other variants of a ``run_variants`` batch) keep the model's own arithmetic."""

    __slots__ = ("_normed", "members", "spans", "x")

    def __init__(self, x: torch.Tensor, spans: list[Span]) -> None:
        self.x = x
        self.spans = spans
        self.members: list[HeadChannel] = []
        self._normed: dict[Span, torch.Tensor] = {}

    def norm(self, ln: Any, span: Span) -> torch.Tensor:
        normed = self._normed.get(span)
        if normed is None:  # forward(): the module's own hooks stay out of it
            normed = self._normed[span] = ln.forward(self.x[span[0] : span[1]])
        return normed


class _State:
    """Per-forward scratch: stashed inputs, edge deltas on their way to receivers, q/k/v groups."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.z: dict[int, torch.Tensor] = {}
        self.resid_pre: dict[int, torch.Tensor] = {}
        self.qkv: dict[int, list[_Group]] = {}
        self.qkv_of: dict[tuple[int, int, str], _Group] = {}
        self.proj: dict[tuple[int, str], torch.Tensor] = {}
        self.attn_kw: dict[int, tuple[Any, Any]] = {}
        self.patterns: dict[tuple[int, int], list[tuple[Span, torch.Tensor]]] = {}
        self.deltas: dict[ReceiverKey, list[torch.Tensor]] = defaultdict(list)
        self.delta_rows: dict[int, slice] = {}  # id(delta) -> the rows it is non-zero in


def _apply_edits(act: torch.Tensor, edits: list[Edit], state: _State, model: Any) -> None:
    """Apply node-level edits in place; senders restricted to receivers only record deltas."""
    for e in edits:
        e.sel.check(act)
        if e.source_mode == "aligned" and e.source is not None:
            rows = e.sel.rows(act.shape[0])
            if e.source.shape[0] != rows.stop - rows.start or e.source.shape[1] != act.shape[1]:
                raise InterventionError(
                    f"{type(e.iv).__name__} at {e.iv.site}: source data is {tuple(e.source.shape[:2])} "
                    f"but the forward is {(rows.stop - rows.start, act.shape[1])}",
                    fix="resample/patch sources must match the tokens example by example",
                )
        x = e.sel.get(act)
        if e.receivers:
            state_delta(state, e, act, e.new_values(x) - x, model)
        elif e.additive is not None:
            e.sel.put(act, x + e.additive)
        else:
            e.sel.put(act, e.new_values(x))


def state_delta(state: _State, e: Edit, act: torch.Tensor, delta: torch.Tensor, model: Any) -> None:
    """Turn a sender's change (in its slot's space) into a d_model delta for its receivers."""
    if e.w_out is not None:
        delta = delta @ e.w_out
    full = torch.zeros(
        act.shape[0], act.shape[1], model.shape.d_model, dtype=act.dtype, device=act.device
    )
    e.sel.put(full, delta)
    state.delta_rows[id(full)] = e.sel.rows(act.shape[0])
    for key in e.receivers:
        state.deltas[key].append(full)


def _summed(x: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    return x + deltas[0] if len(deltas) == 1 else x + torch.stack(deltas).sum(0)


class HookSet:
    """Installs the hooks for ``edits`` and ``captures`` ({name: Slot}) on ``model.hf``;
    captured values go into ``out`` (a fresh dict when not given), refilled by every forward."""

    def __init__(
        self,
        model: Any,
        edits: list[Edit],
        captures: dict[str, Slot],
        out: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.arch = model.arch
        self.state = _State()
        self.captured: dict[str, torch.Tensor] = out if out is not None else {}
        self.handles: list[Any] = []
        self.by_slot: dict[tuple[str, int], list[Edit]] = defaultdict(list)
        self.receivers: dict[tuple[str, int], set[ReceiverKey]] = defaultdict(set)
        for e in edits:
            self.by_slot[(e.slot.kind, e.slot.layer)].append(e)
            for r in e.receivers:
                self.receivers[(r[0], r[1])].add(r)
        self.captures: dict[tuple[str, int], list[tuple[str, Slot]]] = defaultdict(list)
        for name, slot in captures.items():
            self.captures[(slot.kind, slot.layer)].append((name, slot))
        try:
            self._install()
        except BaseException:
            self.remove()
            raise

    # -- installation -------------------------------------------------------------------------
    def _mod(self, role: str, layer: int | None = None) -> Any:
        return self.model.module(self.arch.path(role, layer))

    def _pre(self, role: str, layer: int | None, fn: Any, kwargs: bool = False) -> None:
        h = self._mod(role, layer).register_forward_pre_hook(fn, with_kwargs=kwargs)
        self.handles.append(h)

    def _post(self, role: str, layer: int | None, fn: Any) -> None:
        self.handles.append(self._mod(role, layer).register_forward_hook(fn))

    def _need(self, *keys: tuple[str, int]) -> bool:
        return any(k in self.by_slot or k in self.captures or k in self.receivers for k in keys)

    def _recompute_heads(self, L: int) -> set[int]:
        """Query heads whose k or v input changes under grouped-query attention."""
        if not self.model.shape.grouped_kv:
            return set()
        hc = {(e.slot.head or 0, e.slot.channel) for e in self.by_slot.get(("qkv_in", L), [])}
        hc |= {(r[2], r[3]) for r in self.receivers.get(("qkv", L), ())}
        hc |= {(s.head or 0, s.channel) for _, s in self.captures.get(("qkv_in", L), ())}
        return {h for h, c in hc if c in ("k", "v")}

    def _install(self) -> None:
        self.handles.append(self.model.hf.register_forward_pre_hook(lambda *_: self.state.reset()))
        for L in range(self.model.shape.n_layers):
            if self._need(("resid_pre", L)) or ("resid_mid", L) in self.by_slot:
                self._pre("block", L, self._block_pre(L), kwargs=True)
            recompute = self._recompute_heads(L)
            if recompute:
                self._pre("attn", L, self._attn_pre(L), kwargs=True)
            if ("resid_mid", L) in self.by_slot or ("pattern", L) in self.captures:
                self._post("attn", L, self._attn_post(L))
            if self._need(("qkv", L), ("qkv_in", L)):
                self._pre("ln1", L, self._ln1_pre(L))
                for role, channels in self.arch.qkv_modules().items():
                    self._post(role, L, self._qkv_post(L, role, channels, recompute))
            if (
                self._need(("z", L))
                or ("head_resid", L) in self.by_slot
                or ("head_resid", L) in self.captures
                or recompute
            ):
                self._pre("attn_out", L, self._z_pre(L, recompute))
            if ("head_resid", L) in self.by_slot:
                self._post("attn_out", L, self._head_resid_post(L))
            if self._need(("mlp_in", L), ("resid_mid", L)):
                self._pre("ln2", L, self._ln2_pre(L))
            if self._need(("neurons", L)):
                self._pre("mlp_down", L, self._neurons_pre(L))
            if self._need(("mlp_out", L)):
                self._post("mlp", L, self._mlp_post(L))
            if self._need(("resid_post", L)):
                self._post("block", L, self._block_post(L))
        if self._need(("logits", -1), ("logits_in", -1)):
            self._pre("final_norm", None, self._final_norm_pre())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _capture(self, kind: str, layer: int, act: torch.Tensor) -> torch.Tensor:
        """Store this slot's captures; returns the tensor the forward should go on with. Under
        autograd a capture of some columns (a head's z, a neuron) must be on the forward's path,
        so ``act`` is split at the captured columns and put back together from the pieces."""
        caps = self.captures.get((kind, layer), ())
        if torch.is_grad_enabled() and any(slot.cols is not None for _, slot in caps):
            cuts = sorted(
                {0, act.shape[-1]}
                | {
                    c
                    for _, sl in caps
                    if sl.cols is not None
                    for c in (sl.cols.start, sl.cols.stop)
                }
            )
            pieces = torch.split(act, [b - a for a, b in zip(cuts, cuts[1:], strict=False)], -1)
            at = dict(zip(cuts, pieces, strict=False))
            act = torch.cat(pieces, -1)
            for name, slot in caps:
                self.captured[name] = act if slot.cols is None else at[slot.cols.start]
            return act
        for name, slot in caps:
            val = act if slot.cols is None else act[..., slot.cols]
            self.captured[name] = _keep(val)
        return act

    def _head_cols(self, h: int) -> slice:
        dh = self.model.shape.d_head
        return slice(h * dh, (h + 1) * dh)

    # -- residual stream ----------------------------------------------------------------------
    def _block_pre(self, L: int):
        edits = self.by_slot.get(("resid_pre", L), [])
        keep = ("resid_mid", L) in self.by_slot

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if edits:
                x = x.clone()
                _apply_edits(x, edits, self.state, self.model)
            if keep:
                self.state.resid_pre[L] = x
            self._capture("resid_pre", L, x)
            if not edits:
                return None
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return hook

    def _attn_pre(self, L: int):
        def hook(module, args, kwargs):
            self.state.attn_kw[L] = (
                kwargs.get("position_embeddings"),
                kwargs.get("attention_mask"),
            )

        return hook

    def _attn_post(self, L: int):
        edits = self.by_slot.get(("resid_mid", L), [])

        def hook(module, args, output):
            out, weights = output[0], output[1]
            for name, slot in self.captures.get(("pattern", L), ()):
                redone = self.state.patterns.get((L, slot.head or 0), ())
                p = weights[:, slot.head]
                p = p.clone() if redone else _keep(p)
                for (a, b), rows in redone:
                    p[a:b] = rows if torch.is_grad_enabled() else rows.detach()
                self.captured[name] = p
            if not edits:
                return None
            mid = self.state.resid_pre[L] + out
            new = mid.clone()
            _apply_edits(new, edits, self.state, self.model)
            return (out + (new - mid), *output[1:])

        return hook

    # -- q/k/v inputs -------------------------------------------------------------------------
    def _ln1_pre(self, L: int):
        """Build this forward's q/k/v groups: heads whose inputs carry the same edge deltas share
        one effective input (one norm, one matmul); each edited head/channel has its own."""
        edits: dict[HeadChannel, list[Edit]] = defaultdict(list)
        for e in self.by_slot.get(("qkv_in", L), []):
            edits[(e.slot.head or 0, e.slot.channel or "q")].append(e)
        received = sorted(
            (r[2], r[3]) for r in self.receivers.get(("qkv", L), ()) if (r[2], r[3]) not in edits
        )
        caps = {(s.head, s.channel): n for n, s in self.captures.get(("qkv_in", L), ())}

        def hook(module, args):
            x = args[0]
            state = self.state
            groups: dict[Any, _Group] = {}
            for h, ch in received:
                deltas = state.deltas.get(("qkv", L, h, ch))
                if not deltas:
                    continue
                gid = tuple(id(t) for t in deltas)
                g = groups.get(gid)
                if g is None:
                    rows = [state.delta_rows[id(t)] for t in deltas]
                    g = groups[gid] = _Group(_summed(x, deltas), _spans(rows))
                g.members.append((h, ch))
            for (h, ch), es in edits.items():
                deltas = state.deltas.get(("qkv", L, h, ch), [])
                xe = x.clone() if not deltas else _summed(x, deltas)
                _apply_edits(xe, es, state, self.model)
                rows = [e.sel.rows(x.shape[0]) for e in es]
                rows += [state.delta_rows[id(t)] for t in deltas]
                g = groups[("edit", h, ch)] = _Group(xe, _spans(rows))
                g.members.append((h, ch))
            if torch.is_grad_enabled():  # a captured head input must be its own, on the path
                for h, ch in caps:
                    if not any((h, ch) in g.members for g in groups.values()):
                        g = groups[("capture", h, ch)] = _Group(x.clone(), [(0, x.shape[0])])
                        g.members.append((h, ch))  # type: ignore[arg-type]
            for g in groups.values():
                for h, ch in g.members:
                    state.qkv_of[(L, h, ch)] = g
            for (h, ch), name in caps.items():
                g = state.qkv_of.get((L, h, ch))  # type: ignore[arg-type]
                self.captured[name] = _keep(x if g is None else g.x)
            state.qkv[L] = list(groups.values())

        return hook

    def _qkv_post(self, L: int, role: str, channels: tuple[str, ...], recompute: set[int]):
        """Rewrite the columns of heads whose input changed; stash the output when a head's
        attention is recomputed."""
        arch = self.arch
        ln = self._mod("ln1", L)
        col_cache: dict[tuple, torch.Tensor] = {}

        def hook(module, args, out):
            patched = False
            for g in self.state.qkv.get(L, ()):
                members = tuple(
                    (h, c)
                    for h, c in g.members
                    if c in channels and not (h in recompute and c in ("k", "v"))
                )
                if not members:
                    continue
                cols = col_cache.get(members)
                if cols is None:  # built once per receiver group, on the weights' device
                    cols = col_cache[members] = torch.cat(
                        [_arange(arch.qkv_cols(c, h)) for h, c in members]
                    ).to(module.weight.device)
                if not patched:
                    out, patched = out.clone(), True
                for a, b in g.spans:
                    out[a:b, :, cols] = arch.project(module, cols, g.norm(ln, (a, b)))
            if recompute:
                for c in channels:
                    self.state.proj[(L, c)] = out
            return out if patched else None

        return hook

    def _head_attention(self, L: int, h: int, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
        """Head ``h``'s attention in rows ``span`` from its own q, k and v (k/v recomputed from
        the head's own modified inputs): ``(z_h [n, pos, d_head], pattern [n, pos, pos])``."""
        arch, state = self.arch, self.state
        a, b = span
        pos_emb, mask = state.attn_kw[L]
        if pos_emb is not None:
            pos_emb = tuple(t if t.shape[0] == 1 else t[a:b] for t in pos_emb)
        ln = self._mod("ln1", L)

        def channel(c: str) -> torch.Tensor:
            cols = arch.qkv_cols(c, h)
            g = state.qkv_of.get((L, h, c))
            if c == "q" or g is None:
                return state.proj[(L, c)][a:b, :, cols]
            module = self._mod(c, L)
            idx = _arange(cols).to(module.weight.device)
            return arch.project(module, idx, ln.forward(g.x[a:b]))

        q = arch.rotary(channel("q"), pos_emb)
        k = arch.rotary(channel("k"), pos_emb)
        v = channel("v")
        scores = (q @ k.transpose(-1, -2)) * arch.attn_scale(self._mod("attn", L))
        P = scores.shape[-1]
        if mask is None:
            causal = torch.ones(P, P, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        else:
            m = mask[:, 0, :, -P:]
            m = m if m.shape[0] == 1 else m[a:b]
            if m.dtype == torch.bool:
                scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
            else:
                scores = scores + m
        pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return pattern @ v, pattern

    def _recompute_spans(self, L: int, h: int) -> list[Span]:
        """Rows where head ``h``'s k or v input differs from the clean one."""
        rows: list[slice] = []
        for c in ("k", "v"):
            g = self.state.qkv_of.get((L, h, c))
            if g is not None:
                rows += [slice(a, b) for a, b in g.spans]
        return _spans(rows)

    # -- head outputs -------------------------------------------------------------------------
    def _z_pre(self, L: int, recompute: set[int]):
        edits = self.by_slot.get(("z", L), [])
        keep = ("head_resid", L) in self.by_slot or ("head_resid", L) in self.captures
        dh = self.model.shape.d_head
        w_o = self._mod("attn_out", L)
        heads = sorted(recompute)

        def hook(module, args):
            z = args[0]
            if edits or heads:
                z = z.clone()
            for h in heads:
                cols = self._head_cols(h)
                for span in self._recompute_spans(L, h):
                    z_h, pattern = self._head_attention(L, h, span)
                    z[span[0] : span[1], :, cols] = z_h
                    self.state.patterns.setdefault((L, h), []).append((span, pattern))
            for e in edits:
                # fused multi-head edits see z as [batch, pos, head, d_head]
                act = z.view(*z.shape[:-1], -1, dh) if e.slot.head is None else z[..., e.slot.cols]
                _apply_edits(act, [e], self.state, self.model)
            z_in = z
            z = self._capture("z", L, z)
            if keep:
                self.state.z[L] = z
            for name, slot in self.captures.get(("head_resid", L), ()):
                cols = self._head_cols(slot.head or 0)
                r = z[..., cols] @ self.arch.out_rows(w_o, cols)
                self.captured[name] = r if torch.is_grad_enabled() else r.detach()
            return (z,) if edits or heads or z is not z_in else None

        return hook

    def _head_resid_post(self, L: int):
        edits = self.by_slot[("head_resid", L)]
        w_o = self._mod("attn_out", L)

        def hook(module, args, out):
            out = out.clone()
            for e in edits:
                cols = self._head_cols(e.slot.head or 0)
                if e.additive is not None:
                    delta = e.additive
                else:
                    r = e.sel.get(self.state.z[L][..., cols] @ self.arch.out_rows(w_o, cols))
                    delta = e.new_values(r) - r
                if e.receivers:
                    full_delta = (
                        delta.expand_as(e.sel.get(out)) if e.additive is not None else delta
                    )
                    state_delta(self.state, e, out, full_delta, self.model)
                else:
                    e.sel.put(out, e.sel.get(out) + delta)
            return out

        return hook

    # -- MLP ----------------------------------------------------------------------------------
    def _ln2_pre(self, L: int):
        def hook(module, args):
            x = args[0]
            self._capture("resid_mid", L, x)
            deltas = self.state.deltas.get(("mlp_in", L, -1, ""))
            if deltas:
                x = _summed(x, deltas)
            self._capture("mlp_in", L, x)
            return (x,) if deltas else None

        return hook

    def _neurons_pre(self, L: int):
        edits = self.by_slot.get(("neurons", L), [])

        def hook(module, args):
            a = args[0]
            if edits:
                a = a.clone()
                for e in edits:
                    act = a if e.slot.cols is None else a[..., e.slot.cols]
                    _apply_edits(act, [e], self.state, self.model)
            a_in = a
            a = self._capture("neurons", L, a)
            return (a,) if edits or a is not a_in else None

        return hook

    def _mlp_post(self, L: int):
        edits = self.by_slot.get(("mlp_out", L), [])

        def hook(module, args, out):
            if edits:
                out = out.clone()
                _apply_edits(out, edits, self.state, self.model)
            self._capture("mlp_out", L, out)
            return out if edits else None

        return hook

    def _block_post(self, L: int):
        edits = self.by_slot.get(("resid_post", L), [])

        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            if edits:
                x = x.clone()
                _apply_edits(x, edits, self.state, self.model)
            self._capture("resid_post", L, x)
            if not edits:
                return None
            return (x, *out[1:]) if isinstance(out, tuple) else x

        return hook

    def _final_norm_pre(self):
        def hook(module, args):
            x = args[0]
            deltas = self.state.deltas.get(("logits", -1, -1, ""))
            if deltas:
                x = _summed(x, deltas)
            self._capture("logits_in", -1, x)
            return (x,) if deltas else None

        return hook


def _keep(val: torch.Tensor) -> torch.Tensor:
    """A capture: under autograd the live tensor of the forward itself (so
    ``torch.autograd.grad(metric, cache[name])`` is the gradient at that activation); otherwise a
    detached copy."""
    return val if torch.is_grad_enabled() else val.detach().clone()


def _arange(cols: slice) -> torch.Tensor:
    return torch.arange(cols.start, cols.stop)
