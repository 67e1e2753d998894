"""What every hook of a :class:`~circuitsteer.engine.hooks.HookSet` shares: the plan's edits,
receivers and captures per slot, registering and removing torch hooks on ``model.hf``, and
storing captures."""

from __future__ import annotations

from typing import Any

import torch

from circuitsteer.engine.hook_state import HookState
from circuitsteer.engine.plan import Edit, ReceiverKey, Slot


class HookBase:
    """The tables and helpers the hook builders read; :class:`~circuitsteer.engine.hooks.HookSet`
    fills them and installs the hooks."""

    model: Any
    arch: Any
    state: HookState
    captured: dict[str, torch.Tensor]
    handles: list[Any]
    by_slot: dict[tuple[str, int], list[Edit]]
    receivers: dict[tuple[str, int], set[ReceiverKey]]
    captures: dict[tuple[str, int], list[tuple[str, Slot]]]

    # -- installation -------------------------------------------------------------------------
    def _mod(self, role: str, layer: int | None = None) -> Any:
        return self.model.module(self.arch.path(role, layer))

    def _pre(self, role: str, layer: int | None, fn: Any, kwargs: bool = False) -> None:
        h = self._mod(role, layer).register_forward_pre_hook(fn, with_kwargs=kwargs)
        self.handles.append(h)

    def _post(self, role: str, layer: int | None, fn: Any) -> None:
        self.handles.append(self._mod(role, layer).register_forward_hook(fn))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # -- captures -----------------------------------------------------------------------------
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
            self.captured[name] = keep_capture(val)
        return act

    def _head_cols(self, h: int) -> slice:
        dh = self.model.shape.d_head
        return slice(h * dh, (h + 1) * dh)


def keep_capture(val: torch.Tensor) -> torch.Tensor:
    """A capture: under autograd the live tensor of the forward itself (so
    ``torch.autograd.grad(metric, cache[name])`` is the gradient at that activation); otherwise a
    detached copy."""
    return val if torch.is_grad_enabled() else val.detach().clone()
