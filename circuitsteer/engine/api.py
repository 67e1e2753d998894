"""``apply``, ``run`` and ``run_variants``: the engine's public calls.

Example:
    >>> import torch, circuitsteer as cs
    >>> model = cs.random_gpt2()
    >>> tokens = torch.randint(0, 256, (2, 8))
    >>> ivs = [cs.Ablate(cs.Site("a1.h2", positions=-1), mode="zero")]
    >>> logits, cache = cs.engine.run(model, tokens, ivs, capture=["a1.h2"])
    >>> cache["a1.h2"][:, -1].abs().max().item()
    0.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from circuitsteer.engine.branch import branched, resid_pres
from circuitsteer.engine.chunking import progress as show_progress
from circuitsteer.engine.chunking import rows_per_forward, spans
from circuitsteer.engine.hooks import HookSet
from circuitsteer.engine.plan import Edit, Slot, capture_slot
from circuitsteer.engine.plan import compile_plan as _compile
from circuitsteer.engine.sources import (
    Cache,
    References,
    bind_mean_positions,
    prepare_source,
    resolve_sources,
)
from circuitsteer.errors import InterventionError
from circuitsteer.interventions import Intervention


def _tokens_and_positions(tokens: Any, positions: Mapping[str, torch.Tensor] | None):
    """(tokens, named positions, the Task or None)."""
    if isinstance(tokens, torch.Tensor):
        return tokens, positions, None
    clean = getattr(tokens, "clean", None)
    if isinstance(clean, torch.Tensor):  # a Task
        pos = positions if positions is not None else getattr(tokens, "positions", None)
        return clean, pos, tokens
    raise InterventionError(
        f"tokens must be a LongTensor [batch, pos] or a Task, got {type(tokens).__name__}",
        fix="pass task.clean / task, or model.to_tokens(...)",
    )


def compile_plan(
    model: Any,
    interventions: Sequence[Intervention],
    positions: Mapping[str, torch.Tensor] | None,
    refs: References,
    run_tokens: torch.Tensor | None = None,
    row0: int = 0,
    n: int | None = None,
    task: Any = None,
    window: slice | None = None,
) -> list[Edit]:
    """Validate interventions against the model and compile them into (fused) edits.

    ``window``: the rows of ``run_tokens`` (and of ``positions``) this forward runs, when a large
    batch is split; aligned sources are cut to it, means stay over the whole reference."""
    prepare = partial(
        _prepare,
        refs=refs,
        run_tokens=run_tokens,
        positions=positions,
        run_task=task,
        window=window,
    )
    return _compile(model, interventions, _window(positions, window), prepare, row0, n)


def _window(
    positions: Mapping[str, torch.Tensor] | None, window: slice | None
) -> Mapping[str, torch.Tensor] | None:
    if window is None or positions is None:
        return positions
    return {k: v[window] for k, v in positions.items()}


def _prepare(e: Edit, node: Any, *, refs, run_tokens, positions, run_task, window) -> None:
    prepare_source(e, node, refs, run_tokens, positions, run_task, window)


@contextmanager
def apply(
    model: Any,
    interventions: Sequence[Intervention],
    positions: Mapping[str, torch.Tensor] | None = None,
    capture: Sequence[str] | None = None,
    tokens: Any = None,
) -> Iterator[Cache]:
    """Intervene on every forward pass of ``model`` inside the block; remove all hooks on exit,
    also when the block raises. Yields a Cache that each forward refills with ``capture``
    (read it inside the block after a forward, or after the block for the last forward).

    ``tokens`` (the tokens, or a Task, of the forwards to come) is needed only to check
    resample/patch sources against them and to know a Task's padding for mean ablation.

    >>> with apply(model, [cs.Scale(cs.Site("m0"), 0.0)], capture=["m0"]) as cache:  # doctest: +SKIP
    ...     logits = model(tokens)
    ...     out = cache["m0"]
    """
    toks, task = tokens, None
    if tokens is not None and not isinstance(tokens, torch.Tensor):
        toks, positions, task = _tokens_and_positions(tokens, positions)
    refs = References(model)
    edits = compile_plan(model, interventions, positions, refs, toks, task=task)
    resolve_sources(edits)
    bind_mean_positions(edits)
    captures = {name: capture_slot(name, model) for name in capture or ()}
    cache = Cache()
    hooks = HookSet(model, edits, captures, out=cache)
    try:
        yield cache
    finally:
        hooks.remove()


def run(
    model: Any,
    tokens: Any,
    interventions: Sequence[Intervention] = (),
    capture: Sequence[str] | None = None,
    positions: Mapping[str, torch.Tensor] | None = None,
    grad: bool = False,
    max_batch: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, Cache]:
    """One forward with ``interventions``; returns ``(logits, captured)``.

    ``tokens`` is a LongTensor or a Task (its clean tokens and named positions). A batch larger
    than ``max_batch`` rows or the memory budget ``max_bytes`` (see
    :mod:`circuitsteer.engine.chunking`) runs in chunks, each with its part of the named
    positions and patch/resample sources; results equal one forward. ``grad=True`` keeps the
    autograd graph: the logits and every capture (the live activation of the forward, so
    ``torch.autograd.grad(metric, cache[name])`` is the gradient there). ``progress``: None
    shows a bar for long chunked work unless ``CIRCUITSTEER_QUIET`` is set; False never.

    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(); toks = torch.randint(0, 256, (3, 5))
    >>> lg, cache = run(m, toks, capture=["a1.h0"], grad=True)
    >>> g, = torch.autograd.grad(lg[:, -1, 7].sum(), cache["a1.h0"])
    >>> tuple(g.shape)
    (3, 5, 8)
    """
    toks, pos, task = _tokens_and_positions(tokens, positions)
    B = toks.shape[0]
    rows = rows_per_forward(model, toks.shape[1], max_batch, max_bytes, grad)
    refs = References(model, rows_per_forward(model, toks.shape[1], max_batch, max_bytes))
    captures = {name: capture_slot(name, model) for name in capture or ()}
    chunks = spans(B, rows)
    outs: list[torch.Tensor] = []
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in captures}
    for a, b in show_progress(chunks, len(chunks), "run", progress):
        window = None if (a, b) == (0, B) else slice(a, b)
        edits = compile_plan(model, interventions, pos, refs, toks, task=task, window=window)
        resolve_sources(edits)
        bind_mean_positions(edits)
        hooks = HookSet(model, edits, captures)
        try:
            with torch.set_grad_enabled(grad):
                outs.append(model(toks[a:b]))
        finally:
            hooks.remove()
        for n_, v in hooks.captured.items():
            caps[n_].append(v)
    return _cat(outs), Cache({n: _cat(v) for n, v in caps.items()})


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class VariantResults:
    """``logits``: ``[K, batch, pos, vocab]`` (or the stacked ``reduce`` outputs);
    ``captured``: name -> ``[K, ...]``. ``results[k]`` gives ``(logits_k, Cache_k)``."""

    logits: torch.Tensor
    captured: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.logits.shape[0]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, Cache]:
        return self.logits[k], Cache({n: v[k] for n, v in self.captured.items()})


def _first_layer(model: Any, edits: list[Edit], captures: dict[str, Slot]) -> int:
    """The first block whose input any edit or capture touches (0: nothing to branch below)."""
    n = model.shape.n_layers
    layers = [e.slot.layer if e.slot.layer >= 0 else n for e in edits]
    layers += [r[1] if r[1] >= 0 else n for e in edits for r in e.receivers]
    layers += [s.layer if s.layer >= 0 else n for s in captures.values()]
    first = min(layers, default=n)
    if first >= n:  # only logits: branch at the last block
        first = n - 1
    return max(0, first)


def _reduce_arity(reduce: Callable[..., torch.Tensor] | None) -> int:
    if reduce is None:
        return 0
    try:
        params = inspect.signature(reduce).parameters.values()
    except (TypeError, ValueError):
        return 1
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return 2 if len(positional) >= 2 else 1


def run_variants(
    model: Any,
    tokens: Any,
    variants: Sequence[Sequence[Intervention]],
    capture: Sequence[str] | None = None,
    positions: Mapping[str, torch.Tensor] | None = None,
    max_batch: int = 256,
    reduce: Callable[..., torch.Tensor] | None = None,
    grad: bool = False,
    max_bytes: int | None = None,
    progress: bool | None = None,
    branch: bool = True,
) -> VariantResults:
    """Run K intervention sets on the same tokens, stacked along the batch in forwards of at
    most ``max_batch`` rows and the memory budget ``max_bytes``; equal to K separate ``run``
    calls. When the prompts alone exceed a forward, they are split too (each variant then runs
    in several forwards).

    ``reduce`` maps each variant's logits to something smaller (a metric) before stacking, so
    K x vocab logits need never be held at once. ``reduce(logits)`` gets a variant's logits
    ``[batch, pos, vocab]`` for the whole batch; a two-argument ``reduce(logits, rows)`` gets
    each forward's rows (``rows`` a slice of the batch) and must return per-example values
    (first dimension the rows), concatenated over the batch: memory then stays bounded however
    many prompts there are. ``grad=True`` keeps the autograd graph (logits and captures).
    ``branch``: compute the blocks below a chunk's first intervened (or captured) layer once
    for the prompts and branch there (:mod:`circuitsteer.engine.branch`); results are equal.

    >>> import circuitsteer as cs
    >>> m = cs.random_gpt2(); toks = torch.randint(0, 256, (4, 5))
    >>> vs = [[cs.Scale(cs.Site("a0.h1"), k / 2)] for k in range(3)]
    >>> res = run_variants(m, toks, vs, reduce=lambda lg, rows: lg[:, -1, 0], max_batch=2)
    >>> tuple(res.logits.shape)
    (3, 4)
    """
    toks, pos, task = _tokens_and_positions(tokens, positions)
    B = toks.shape[0]
    if not variants:
        raise InterventionError(
            "run_variants got no variants", fix="pass a list of intervention lists"
        )
    rows = rows_per_forward(model, toks.shape[1], max_batch, max_bytes, grad)
    refs = References(model, rows_per_forward(model, toks.shape[1], max_batch, max_bytes))
    captures = {name: capture_slot(name, model) for name in capture or ()}
    arity = _reduce_arity(reduce)
    prompt_chunks = spans(B, rows)
    nb = prompt_chunks[0][1] - prompt_chunks[0][0]
    per_chunk = max(1, rows // nb)
    groups = [
        range(s, min(s + per_chunk, len(variants))) for s in range(0, len(variants), per_chunk)
    ]
    # prompt-chunk-major: each window of a resample reference is captured once, for every group
    steps = [(g, pc) for pc in prompt_chunks for g in groups]
    # Compile every step first: each reference batch then says everything it must capture
    # before the first step resolves its sources, so it runs once per call, not once per chunk.
    plans: list[tuple[list[Edit], int]] = []
    for group, (a, b) in steps:
        n = b - a
        window = None if (a, b) == (0, B) else slice(a, b)
        edits: list[Edit] = []
        for j, k in enumerate(group):
            edits += compile_plan(
                model, variants[k], pos, refs, toks, row0=j * n, n=n, task=task, window=window
            )
        plans.append((edits, _first_layer(model, edits, captures) if branch else 0))
    # One prompt chunk and no autograd: the clean residual entering every branching layer
    # comes from one partial forward, shared by the chunks (same kernels on the same rows).
    pre: dict[int, tuple[torch.Tensor, bool]] = {}
    if len(prompt_chunks) == 1 and not grad:
        layers = {s for (g, _), (_, s) in zip(steps, plans, strict=True) if len(g) > 1 and s > 0}
        if len(layers) > 1:
            a, b = prompt_chunks[0]
            with torch.no_grad():
                pre = resid_pres(model, toks[a:b], layers)
    outs: list[torch.Tensor] = []
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in captures}
    pending: dict[int, list[torch.Tensor]] = {}  # variant -> its logits (or reductions) so far
    pending_caps: dict[int, dict[str, list[torch.Tensor]]] = {}
    for i in show_progress(range(len(steps)), len(steps), "run_variants", progress):
        (group, (a, b)), (edits, start) = steps[i], plans[i]
        plans[i] = ([], 0)  # drop this step's resolved sources once it has run
        n = b - a
        resolve_sources(edits)
        bind_mean_positions(edits)
        with (
            torch.set_grad_enabled(grad),
            branched(model, toks[a:b], start, len(group), pre.get(start)),
        ):
            hooks = HookSet(model, edits, captures)
            try:
                logits = model(toks[a:b].repeat(len(group), 1))
            finally:
                hooks.remove()
        for j, k in enumerate(group):
            part = logits[j * n : (j + 1) * n]
            pending.setdefault(k, []).append(
                reduce(part, slice(a, b)) if arity == 2 and reduce is not None else part
            )
            for n_, v in hooks.captured.items():
                pending_caps.setdefault(k, {}).setdefault(n_, []).append(v[j * n : (j + 1) * n])
        if b == B:  # the group's variants are complete
            for k in group:
                full = _cat(pending.pop(k))
                outs.append(reduce(full) if arity == 1 and reduce is not None else full)
                for n_, v in pending_caps.pop(k, {}).items():
                    caps[n_].append(_cat(v))
    return VariantResults(torch.stack(outs), {n: torch.stack(v) for n, v in caps.items()})
