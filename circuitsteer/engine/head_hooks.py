"""The hooks of attention heads: q/k/v inputs (edits, edge deltas and captures, one
projection per group of heads sharing an input), each head's attention recomputed from its own
k/v under grouped-query attention, and head outputs (``z`` and ``head_resid``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from circuitsteer.engine.hook_base import HookBase, keep_capture
from circuitsteer.engine.hook_state import (
    HeadChannel,
    QKVGroup,
    Span,
    apply_edits,
    merge_spans,
    state_delta,
    summed,
)
from circuitsteer.engine.plan import Edit


class HeadHooks(HookBase):
    """Hook builders for q/k/v inputs and head outputs."""

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
            groups: dict[Any, QKVGroup] = {}
            for h, ch in received:
                deltas = state.deltas.get(("qkv", L, h, ch))
                if not deltas:
                    continue
                gid = tuple(id(t) for t in deltas)
                g = groups.get(gid)
                if g is None:
                    rows = [state.delta_rows[id(t)] for t in deltas]
                    g = groups[gid] = QKVGroup(summed(x, deltas), merge_spans(rows))
                g.members.append((h, ch))
            for (h, ch), es in edits.items():
                deltas = state.deltas.get(("qkv", L, h, ch), [])
                xe = x.clone() if not deltas else summed(x, deltas)
                apply_edits(xe, es, state, self.model)
                rows = [e.sel.rows(x.shape[0]) for e in es]
                rows += [state.delta_rows[id(t)] for t in deltas]
                g = groups[("edit", h, ch)] = QKVGroup(xe, merge_spans(rows))
                g.members.append((h, ch))
            if torch.is_grad_enabled():
                # a captured head input must be its own tensor on the path to its own projection
                # only: a group's shared input would collect the gradient of every member
                for h, ch in caps:
                    g = next((g for g in groups.values() if (h, ch) in g.members), None)
                    if g is None:
                        own = QKVGroup(x.clone(), [(0, x.shape[0])])
                    elif len(g.members) > 1:
                        g.members.remove((h, ch))  # type: ignore[arg-type]
                        own = QKVGroup(g.x.clone(), list(g.spans))
                    else:
                        continue
                    own.members.append((h, ch))  # type: ignore[arg-type]
                    groups[("capture", h, ch)] = own
            for g in groups.values():
                for h, ch in g.members:
                    state.qkv_of[(L, h, ch)] = g
            for (h, ch), name in caps.items():
                g = state.qkv_of.get((L, h, ch))  # type: ignore[arg-type]
                self.captured[name] = keep_capture(x if g is None else g.x)
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

    # -- a head's attention from its own k/v (grouped-query attention) -----------------------
    def _attn_pre(self, L: int):
        """Stash this forward's attention kwargs (rotary embeddings, mask) for
        :meth:`_head_attention`."""

        def hook(module, args, kwargs):
            self.state.attn_kw[L] = (
                kwargs.get("position_embeddings"),
                kwargs.get("attention_mask"),
            )

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

    def _recomputemerge_spans(self, L: int, h: int) -> list[Span]:
        """Rows where head ``h``'s k or v input differs from the clean one."""
        rows: list[slice] = []
        for c in ("k", "v"):
            g = self.state.qkv_of.get((L, h, c))
            if g is not None:
                rows += [slice(a, b) for a, b in g.spans]
        return merge_spans(rows)

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
                for span in self._recomputemerge_spans(L, h):
                    z_h, pattern = self._head_attention(L, h, span)
                    z[span[0] : span[1], :, cols] = z_h
                    self.state.patterns.setdefault((L, h), []).append((span, pattern))
            for e in edits:
                # fused multi-head edits see z as [batch, pos, head, d_head]
                act = z.view(*z.shape[:-1], -1, dh) if e.slot.head is None else z[..., e.slot.cols]
                apply_edits(act, [e], self.state, self.model)
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


def _arange(cols: slice) -> torch.Tensor:
    return torch.arange(cols.start, cols.stop)
