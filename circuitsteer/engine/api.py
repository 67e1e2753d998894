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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from circuitsteer.engine.hooks import HookSet
from circuitsteer.engine.plan import Edit, capture_slot
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
) -> list[Edit]:
    """Validate interventions against the model and compile them into (fused) edits."""
    prepare = partial(
        _prepare, refs=refs, run_tokens=run_tokens, positions=positions, run_task=task
    )
    return _compile(model, interventions, positions, prepare, row0, n)


def _prepare(e: Edit, node: Any, *, refs, run_tokens, positions, run_task) -> None:
    prepare_source(e, node, refs, run_tokens, positions, run_task)


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
) -> tuple[torch.Tensor, Cache]:
    """One forward with ``interventions``; returns ``(logits, captured)``.

    ``tokens`` is a LongTensor or a Task (its clean tokens and named positions).
    """
    toks, pos, task = _tokens_and_positions(tokens, positions)
    with (
        torch.set_grad_enabled(grad),
        apply(model, interventions, pos, capture, task if task is not None else toks) as cache,
    ):
        logits = model(toks)
    return logits, cache


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


def run_variants(
    model: Any,
    tokens: Any,
    variants: Sequence[Sequence[Intervention]],
    capture: Sequence[str] | None = None,
    positions: Mapping[str, torch.Tensor] | None = None,
    max_batch: int = 256,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> VariantResults:
    """Run K intervention sets on the same tokens, stacked along the batch in chunks of at most
    ``max_batch`` rows; equal to K separate ``run`` calls.

    ``reduce`` maps each variant's logits ``[batch, pos, vocab]`` to something smaller (a metric)
    before stacking, so K x vocab logits need never be held at once.
    """
    toks, pos, task = _tokens_and_positions(tokens, positions)
    B = toks.shape[0]
    if not variants:
        raise InterventionError(
            "run_variants got no variants", fix="pass a list of intervention lists"
        )
    per_chunk = max(1, max_batch // B)
    refs = References(model)
    captures = {name: capture_slot(name, model) for name in capture or ()}
    outs: list[torch.Tensor] = []
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in captures}
    for start in range(0, len(variants), per_chunk):
        chunk = variants[start : start + per_chunk]
        edits: list[Edit] = []
        for j, ivs in enumerate(chunk):
            edits += compile_plan(model, ivs, pos, refs, toks, row0=j * B, n=B, task=task)
        resolve_sources(edits)
        bind_mean_positions(edits)
        hooks = HookSet(model, edits, captures)
        try:
            with torch.no_grad():
                logits = model(toks.repeat(len(chunk), 1))
        finally:
            hooks.remove()
        for j in range(len(chunk)):
            part = logits[j * B : (j + 1) * B]
            outs.append(reduce(part) if reduce is not None else part)
        for n_, v in hooks.captured.items():
            caps[n_] += list(v.split(B))
    return VariantResults(torch.stack(outs), {n: torch.stack(v) for n, v in caps.items()})
