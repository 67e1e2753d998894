"""Branching: run the layers below a stacked forward's first intervened layer once.

Every variant of a ``run_variants`` chunk reads the same clean prompts, so the blocks below the
chunk's earliest edit or capture compute the same rows K times. :func:`branched` runs them once
for the prompts, takes the residual stream entering block ``L`` and feeds it, repeated K times,
into block ``L`` of the stacked forward while blocks ``0..L-1`` pass their input through. The
rows are computed by the same kernels on the same values, so results equal the unbranched run.

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=3)
    >>> toks = torch.randint(0, 256, (2, 5))
    >>> with torch.no_grad(), branched(m, toks, layer=2, copies=3):
    ...     lg = m(toks.repeat(3, 1))
    >>> torch.allclose(lg[:2], m(toks))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class _Stop(Exception):
    pass


class _PassThrough(torch.nn.Module):
    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,) if self.as_tuple else hidden_states


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def resid_pre(model: Any, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, bool]:
    """The residual stream entering block ``layer`` on ``tokens`` (the blocks above are not
    run), and whether blocks return tuples."""
    return resid_pres(model, tokens, [layer])[layer]


def resid_pres(
    model: Any, tokens: torch.Tensor, layers: set[int] | list[int]
) -> dict[int, tuple[torch.Tensor, bool]]:
    """:func:`resid_pre` at several layers from one partial forward (up to the highest)."""
    wanted = sorted({L for L in layers if L > 0})
    if not wanted:
        return {}
    got: dict[int, torch.Tensor] = {}
    kind: dict[str, bool] = {}
    top = wanted[-1]

    def grab(layer: int):
        def hook(module, args, kwargs):
            got[layer] = _input(args, kwargs)
            if layer == top:
                raise _Stop

        return hook

    def out_kind(module, args, out):
        kind["tuple"] = isinstance(out, tuple)

    arch = model.arch
    handles = [
        model.module(arch.path("block", L)).register_forward_pre_hook(grab(L), with_kwargs=True)
        for L in wanted
    ]
    handles.append(model.module(arch.path("block", 0)).register_forward_hook(out_kind))
    try:
        model(tokens)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    as_tuple = bool(kind.get("tuple", False))
    return {L: (got[L], as_tuple) for L in wanted}


@contextmanager
def branched(
    model: Any,
    tokens: torch.Tensor,
    layer: int,
    copies: int,
    pre: tuple[torch.Tensor, bool] | None = None,
) -> Iterator[None]:
    """Inside the block, a forward of ``tokens.repeat(copies, 1)`` skips blocks ``0..layer-1``
    and starts block ``layer`` from their output on ``tokens`` (computed once, here, unless
    ``pre`` already holds it: :func:`resid_pre`'s answer for this layer)."""
    if layer <= 0 or copies <= 1:
        yield
        return
    x, as_tuple = pre if pre is not None else resid_pre(model, tokens, layer)
    stacked = x.repeat(copies, *([1] * (x.dim() - 1)))

    def feed(module, args, kwargs):
        if args:
            return (stacked, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": stacked}

    handle = model.module(model.arch.path("block", layer)).register_forward_pre_hook(
        feed, with_kwargs=True, prepend=True
    )
    try:
        with skipping_blocks(model, layer, as_tuple):
            yield
    finally:
        handle.remove()


@contextmanager
def skipping_blocks(model: Any, layer: int, as_tuple: bool) -> Iterator[None]:
    """Inside the block, blocks ``0..layer-1`` pass their input through (whoever calls this
    feeds block ``layer`` the residual it should start from); they are put back on exit."""
    first = model.arch.path("block", 0)
    blocks = model.module(first.rpartition(".")[0])
    saved = [blocks[i] for i in range(layer)]
    try:
        for i in range(layer):
            blocks[i] = _PassThrough(as_tuple)
        yield
    finally:
        for i, b in enumerate(saved):
            blocks[i] = b
