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

from circuitsteer.engine.head_hooks import HeadHooks
from circuitsteer.engine.hook_state import HookState
from circuitsteer.engine.plan import Edit, Slot
from circuitsteer.engine.stream_hooks import StreamHooks


class HookSet(HeadHooks, StreamHooks):
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
        self.state = HookState()
        self.captured = out if out is not None else {}
        self.handles = []
        self.by_slot = defaultdict(list)
        self.receivers = defaultdict(set)
        for e in edits:
            self.by_slot[(e.slot.kind, e.slot.layer)].append(e)
            for r in e.receivers:
                self.receivers[(r[0], r[1])].add(r)
        self.captures = defaultdict(list)
        for name, slot in captures.items():
            self.captures[(slot.kind, slot.layer)].append((name, slot))
        try:
            self._install()
        except BaseException:
            self.remove()
            raise

    # -- installation -------------------------------------------------------------------------
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
