"""A :class:`~circuitsteer.engine.hooks.HookSet`'s per-forward scratch and the arithmetic of its
edits: node-level edits applied in place, a sender's change turned into d_model deltas for its
receivers, and the q/k/v groups of heads that share one effective input."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from circuitsteer.engine.plan import Edit, ReceiverKey
from circuitsteer.errors import InterventionError

HeadChannel = tuple[int, str]
Span = tuple[int, int]  # rows [start, stop) of the batch


def merge_spans(rows: list[slice]) -> list[Span]:
    """Merge row ranges into disjoint sorted spans."""
    out: list[Span] = []
    for a, b in sorted((r.start, r.stop) for r in rows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


class QKVGroup:
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


class HookState:
    """Per-forward scratch: stashed inputs, edge deltas on their way to receivers, q/k/v groups."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.z: dict[int, torch.Tensor] = {}
        self.resid_pre: dict[int, torch.Tensor] = {}
        self.qkv: dict[int, list[QKVGroup]] = {}
        self.qkv_of: dict[tuple[int, int, str], QKVGroup] = {}
        self.proj: dict[tuple[int, str], torch.Tensor] = {}
        self.attn_kw: dict[int, tuple[Any, Any]] = {}
        self.patterns: dict[tuple[int, int], list[tuple[Span, torch.Tensor]]] = {}
        self.deltas: dict[ReceiverKey, list[torch.Tensor]] = defaultdict(list)
        self.delta_rows: dict[int, slice] = {}  # id(delta) -> the rows it is non-zero in


def apply_edits(act: torch.Tensor, edits: list[Edit], state: HookState, model: Any) -> None:
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


def state_delta(
    state: HookState, e: Edit, act: torch.Tensor, delta: torch.Tensor, model: Any
) -> None:
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


def summed(x: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    return x + deltas[0] if len(deltas) == 1 else x + torch.stack(deltas).sum(0)
