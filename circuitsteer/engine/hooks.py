"""Plain torch hooks on the raw HF GPT-2 modules that carry out compiled edits and captures.

Only the hooks a plan needs are installed, so an intervention at one head costs one small hook.
``HookSet.remove()`` takes every handle off; ``engine.apply`` calls it in a ``finally``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F

from circuitsteer.engine.plan import Edit, ReceiverKey, Slot
from circuitsteer.errors import InterventionError
from circuitsteer.nodes import HF_FINAL_LN, hf_module


class _State:
    """Per-forward scratch: stashed inputs, edge deltas on their way to receivers, captures."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ln1_in: dict[int, torch.Tensor] = {}
        self.z: dict[int, torch.Tensor] = {}
        self.resid_pre: dict[int, torch.Tensor] = {}
        self.deltas: dict[ReceiverKey, list[torch.Tensor]] = defaultdict(list)


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
    for key in e.receivers:
        state.deltas[key].append(full)


class HookSet:
    """Installs the hooks for ``edits`` and ``captures`` ({name: Slot}) on ``model.hf``."""

    def __init__(self, model: Any, edits: list[Edit], captures: dict[str, Slot]) -> None:
        self.model = model
        self.state = _State()
        self.captured: dict[str, torch.Tensor] = {}
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
    def _pre(self, path: str, fn: Any) -> None:
        self.handles.append(self.model.module(path).register_forward_pre_hook(fn))

    def _post(self, path: str, fn: Any) -> None:
        self.handles.append(self.model.module(path).register_forward_hook(fn))

    def _need(self, *keys: tuple[str, int]) -> bool:
        return any(k in self.by_slot or k in self.captures or k in self.receivers for k in keys)

    def _install(self) -> None:
        self.handles.append(self.model.hf.register_forward_pre_hook(lambda *_: self.state.reset()))
        for L in range(self.model.shape.n_layers):
            if self._need(("resid_pre", L), ("resid_mid", L)):
                self._pre(hf_module(L, "block"), self._block_pre(L))
            if self._need(("resid_mid", L), ("pattern", L)):
                self._post(hf_module(L, "attn"), self._attn_post(L))
            if self._need(("qkv", L), ("qkv_in", L)):
                self._pre(hf_module(L, "ln_1"), self._ln1_pre(L))
                self._post(hf_module(L, "c_attn"), self._c_attn_post(L))
            if (
                self._need(("z", L))
                or ("head_resid", L) in self.by_slot
                or ("head_resid", L) in self.captures
            ):
                self._pre(hf_module(L, "attn_c_proj"), self._z_pre(L))
            if ("head_resid", L) in self.by_slot:
                self._post(hf_module(L, "attn_c_proj"), self._head_resid_post(L))
            if self._need(("mlp_in", L), ("resid_mid", L)):
                self._pre(hf_module(L, "ln_2"), self._ln2_pre(L))
            if self._need(("neurons", L)):
                self._pre(hf_module(L, "mlp_c_proj"), self._neurons_pre(L))
            if self._need(("mlp_out", L)):
                self._post(hf_module(L, "mlp"), self._mlp_post(L))
            if self._need(("resid_post", L)):
                self._post(hf_module(L, "block"), self._block_post(L))
        if self._need(("logits", -1), ("logits_in", -1)):
            self._pre(HF_FINAL_LN, self._lnf_pre())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _capture(self, kind: str, layer: int, act: torch.Tensor) -> None:
        for name, slot in self.captures.get((kind, layer), ()):
            val = act if slot.cols is None else act[..., slot.cols]
            self.captured[name] = val.detach().clone()

    # -- hooks --------------------------------------------------------------------------------
    def _block_pre(self, L: int):
        edits = self.by_slot.get(("resid_pre", L), [])
        keep = ("resid_mid", L) in self.by_slot

        def hook(module, args):
            x = args[0]
            if edits:
                x = x.clone()
                _apply_edits(x, edits, self.state, self.model)
            if keep:
                self.state.resid_pre[L] = x
            self._capture("resid_pre", L, x)
            return (x, *args[1:]) if edits else None

        return hook

    def _attn_post(self, L: int):
        edits = self.by_slot.get(("resid_mid", L), [])

        def hook(module, args, output):
            out, weights = output[0], output[1]
            for name, slot in self.captures.get(("pattern", L), ()):
                self.captured[name] = weights[:, slot.head].detach().clone()
            if not edits:
                return None
            mid = self.state.resid_pre[L] + out
            new = mid.clone()
            _apply_edits(new, edits, self.state, self.model)
            return (out + (new - mid), *output[1:])

        return hook

    def _ln1_pre(self, L: int):
        def hook(module, args):
            self.state.ln1_in[L] = args[0]

        return hook

    def _c_attn_post(self, L: int):
        d = self.model.shape.d_model
        dh = self.model.shape.d_head
        edits: dict[tuple[int, str], list[Edit]] = defaultdict(list)
        for e in self.by_slot.get(("qkv_in", L), []):
            edits[(e.slot.head or 0, e.slot.channel or "q")].append(e)
        caps = {(s.head, s.channel): n for n, s in self.captures.get(("qkv_in", L), ())}
        attn = self.model.module(hf_module(L, "c_attn"))
        ln = self.model.module(hf_module(L, "ln_1"))
        offset = {"q": 0, "k": d, "v": 2 * d}
        col_cache: dict[tuple, torch.Tensor] = {}

        def hook(module, args, out):
            x = self.state.ln1_in[L]
            groups: dict[Any, list[tuple[int, str]]] = defaultdict(list)
            effective: dict[Any, torch.Tensor] = {}
            for (kind, layer, h, ch), deltas in self.state.deltas.items():
                if kind == "qkv" and layer == L and (h, ch) not in edits:
                    gid = tuple(id(t) for t in deltas)
                    groups[gid].append((h, ch))
                    if gid not in effective:
                        effective[gid] = (
                            x + torch.stack(deltas).sum(0) if len(deltas) > 1 else x + deltas[0]
                        )
            for (h, ch), es in edits.items():
                deltas = self.state.deltas.get(("qkv", L, h, ch), [])
                xe = x.clone() if not deltas else x + torch.stack(deltas).sum(0)
                _apply_edits(xe, es, self.state, self.model)
                groups[("edit", h, ch)].append((h, ch))
                effective[("edit", h, ch)] = xe
            seen = {hc for members in groups.values() for hc in members}
            for (h, ch), name in caps.items():
                if (h, ch) not in seen:
                    self.captured[name] = x.detach().clone()
            if not groups:
                return None
            out = out.clone()
            for gid, members in groups.items():
                xe = effective[gid]
                for h, ch in members:
                    if (h, ch) in caps:
                        self.captured[caps[(h, ch)]] = xe.detach().clone()
                key = tuple(members)
                cols = col_cache.get(key)
                if cols is None:  # built once per receiver group, on the weights' device
                    cols = col_cache[key] = torch.cat(
                        [
                            torch.arange(offset[c] + h * dh, offset[c] + (h + 1) * dh)
                            for h, c in members
                        ]
                    ).to(attn.weight.device)
                normed = F.layer_norm(xe, (d,), ln.weight, ln.bias, ln.eps)
                out[..., cols] = torch.addmm(
                    attn.bias[cols], normed.reshape(-1, d), attn.weight[:, cols]
                ).view(*xe.shape[:-1], -1)
            return out

        return hook

    def _z_pre(self, L: int):
        edits = self.by_slot.get(("z", L), [])
        keep = ("head_resid", L) in self.by_slot or ("head_resid", L) in self.captures
        w = self.model.module(hf_module(L, "attn_c_proj")).weight
        dh = self.model.shape.d_head

        def hook(module, args):
            z = args[0]
            if edits:
                z = z.clone()
                for e in edits:
                    # fused multi-head edits see z as [batch, pos, head, d_head]
                    act = (
                        z.view(*z.shape[:-1], -1, dh)
                        if e.slot.head is None
                        else z[..., e.slot.cols]
                    )
                    _apply_edits(act, [e], self.state, self.model)
            if keep:
                self.state.z[L] = z
            self._capture("z", L, z)
            for name, slot in self.captures.get(("head_resid", L), ()):
                h = slot.head or 0
                self.captured[name] = (
                    z[..., h * dh : (h + 1) * dh] @ w[h * dh : (h + 1) * dh]
                ).detach()
            return (z,) if edits else None

        return hook

    def _head_resid_post(self, L: int):
        edits = self.by_slot[("head_resid", L)]
        w = self.model.module(hf_module(L, "attn_c_proj")).weight
        dh = self.model.shape.d_head

        def hook(module, args, out):
            out = out.clone()
            for e in edits:
                h = e.slot.head or 0
                if e.additive is not None:
                    delta = e.additive
                else:
                    r = e.sel.get(
                        self.state.z[L][..., h * dh : (h + 1) * dh] @ w[h * dh : (h + 1) * dh]
                    )
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

    def _ln2_pre(self, L: int):
        def hook(module, args):
            x = args[0]
            self._capture("resid_mid", L, x)
            deltas = self.state.deltas.get(("mlp_in", L, -1, ""))
            if deltas:
                x = x + torch.stack(deltas).sum(0)
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
                    _apply_edits(
                        a if e.slot.cols is None else a[..., e.slot.cols],
                        [e],
                        self.state,
                        self.model,
                    )
            self._capture("neurons", L, a)
            return (a,) if edits else None

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

    def _lnf_pre(self):
        def hook(module, args):
            x = args[0]
            deltas = self.state.deltas.get(("logits", -1, -1, ""))
            if deltas:
                x = x + torch.stack(deltas).sum(0)
            self._capture("logits_in", -1, x)
            return (x,) if deltas else None

        return hook
