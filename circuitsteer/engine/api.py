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
from typing import Any

import torch

from circuitsteer.engine.hooks import HookSet
from circuitsteer.engine.plan import (
    Edit,
    Slot,
    fuse_head_edits,
    infer_space,
    make_fn,
    parse_capture,
    receiver_keys,
    site_slot,
)
from circuitsteer.engine.positions import Selector, resolve
from circuitsteer.engine.sources import (
    Cache,
    References,
    bind_mean_positions,
    prepare_source,
    resolve_sources,
)
from circuitsteer.errors import InterventionError
from circuitsteer.interventions import INTERVENTION_TYPES, Ablate, Add, Intervention, Patch
from circuitsteer.nodes import Node, hf_module, validate_node


def _tokens_and_positions(tokens: Any, positions: Mapping[str, torch.Tensor] | None):
    if isinstance(tokens, torch.Tensor):
        return tokens, positions
    clean = getattr(tokens, "clean", None)
    if isinstance(clean, torch.Tensor):  # a Task
        return clean, positions if positions is not None else getattr(tokens, "positions", None)
    raise InterventionError(
        f"tokens must be a LongTensor [batch, pos] or a Task, got {type(tokens).__name__}",
        fix="pass task.clean / task, or model.to_tokens(...)",
    )


def _conflict_key(node: Node, slot: Slot) -> tuple:
    if node.kind == "head":
        return ("head", node.layer, node.head, slot.channel)
    if node.kind in ("mlp", "neuron"):
        return ("mlp", node.layer)
    return (slot.kind, slot.layer)


def _overlap(a: Selector, b: Selector) -> bool:
    if "all" in (a.kind, b.kind) or isinstance(a.fixed, slice) or isinstance(b.fixed, slice):
        return True
    if a.kind == b.kind == "fixed":
        fa, fb = tuple(a.fixed or ()), tuple(b.fixed or ())
        if any(p < 0 for p in fa) != any(p < 0 for p in fb):
            return (
                True  # -1 and 4 may be the same position; the length is only known in the forward
            )
        return bool(set(fa) & set(fb))
    if (
        a.kind == b.kind == "per_example"
        and a.per_example is not None
        and b.per_example is not None
    ):
        return bool((a.per_example[:, :, None] == b.per_example[:, None, :]).any())
    return True  # fixed vs per-example: conservatively overlapping


def compile_plan(
    model: Any,
    interventions: Sequence[Intervention],
    positions: Mapping[str, torch.Tensor] | None,
    refs: References,
    run_tokens: torch.Tensor | None = None,
    row0: int = 0,
    n: int | None = None,
) -> list[Edit]:
    """Validate interventions against the model and compile them into edits."""
    edits: list[Edit] = []
    seen: dict[tuple, list[tuple[Edit, bool]]] = {}
    for iv in interventions:
        if not isinstance(iv, INTERVENTION_TYPES):
            raise InterventionError(
                f"not an intervention: {iv!r}",
                fix="use cs.Add, cs.Ablate, cs.ProjectOut, cs.Scale or cs.Patch",
            )
        node = validate_node(iv.site.node, model.shape)
        space = infer_space(iv, node, model)
        slot, width = site_slot(node, iv.site.channel, space, model)
        sel = resolve(iv.site.positions, positions, row0, n)
        fn, additive = make_fn(iv, slot, width, model)
        e = Edit(iv=iv, slot=slot, sel=sel, fn=fn, additive=additive)
        if isinstance(iv, (Ablate, Patch)) and not (isinstance(iv, Ablate) and iv.mode == "zero"):
            prepare_source(e, iv, node, refs, run_tokens, positions)
        if iv.site.to:
            e.receivers = receiver_keys(node, iv.site.to, model)
            if slot.kind == "z":
                e.w_out = model.module(hf_module(slot.layer, "attn_c_proj")).weight[slot.cols]
            elif slot.kind == "neurons":
                w = model.module(hf_module(slot.layer, "mlp_c_proj")).weight
                e.w_out = w if slot.cols is None else w[slot.cols]
        key = _conflict_key(node, slot)
        for other, other_add in seen.get(key, []):
            if not (other_add and isinstance(iv, Add)) and _overlap(other.sel, sel):
                raise InterventionError(
                    f"conflicting interventions on {key_name(key)}: {type(other.iv).__name__} at {other.iv.site} "
                    f"and {type(iv).__name__} at {iv.site} touch the same positions",
                    fix="only Adds may share a site's positions; merge them, or use disjoint positions",
                )
        seen.setdefault(key, []).append((e, isinstance(iv, Add)))
        edits.append(e)
    return fuse_head_edits(edits, model)


def key_name(key: tuple) -> str:
    if key[0] == "head":
        return f"a{key[1]}.h{key[2]}" + (f"<{key[3]}>" if key[3] else "")
    if key[0] == "mlp":
        return f"m{key[1]}"
    return f"{key[0]}.{key[1]}"


@contextmanager
def apply(
    model: Any,
    interventions: Sequence[Intervention],
    positions: Mapping[str, torch.Tensor] | None = None,
    capture: Sequence[str] | None = None,
    tokens: torch.Tensor | None = None,
) -> Iterator[Cache]:
    """Intervene on every forward pass of ``model`` inside the block; remove all hooks on exit,
    also when the block raises. Yields a Cache that each forward refills with ``capture``.

    >>> with apply(model, [cs.Scale(cs.Site("m0"), 0.0)]):   # doctest: +SKIP
    ...     logits = model(tokens)
    """
    refs = References(model)
    edits = compile_plan(model, interventions, positions, refs, tokens)
    resolve_sources(edits)
    bind_mean_positions(edits)
    captures = {name: parse_capture(name, model) for name in capture or ()}
    hooks = HookSet(model, edits, captures)
    cache = Cache()
    try:
        yield cache
    finally:
        hooks.remove()
        cache.update(hooks.captured)


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
    toks, pos = _tokens_and_positions(tokens, positions)
    with torch.set_grad_enabled(grad), apply(model, interventions, pos, capture, toks) as cache:
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
    toks, pos = _tokens_and_positions(tokens, positions)
    B = toks.shape[0]
    if not variants:
        raise InterventionError(
            "run_variants got no variants", fix="pass a list of intervention lists"
        )
    per_chunk = max(1, max_batch // B)
    refs = References(model)
    captures = {name: parse_capture(name, model) for name in capture or ()}
    outs: list[torch.Tensor] = []
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in captures}
    for start in range(0, len(variants), per_chunk):
        chunk = variants[start : start + per_chunk]
        edits: list[Edit] = []
        for j, ivs in enumerate(chunk):
            edits += compile_plan(model, ivs, pos, refs, toks, row0=j * B, n=B)
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
