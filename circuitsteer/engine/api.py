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
from circuitsteer.errors import InterventionError, PositionError
from circuitsteer.interventions import INTERVENTION_TYPES, Ablate, Add, Intervention, Patch
from circuitsteer.nodes import Node, hf_module, validate_node


class Cache(dict):
    """Captured activations by capture name (``a9.h9`` -> z ``[batch, pos, d_head]`` ...)."""


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


def _capture_name(node: Node, slot: Slot) -> str:
    if slot.kind == "qkv_in":
        return f"{node.name}<{slot.channel}>"
    if slot.kind == "head_resid":
        return f"{node.name}:result"
    if slot.kind == "neurons" and node.kind == "mlp":
        return f"{node.name}:neurons"
    return node.name


class _References:
    """Runs each reference batch once, capturing every slot the plan needs from it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.wanted: dict[int, tuple[torch.Tensor, set[str]]] = {}
        self.done: dict[int, Cache] = {}

    def want(self, tokens: torch.Tensor, name: str) -> None:
        self.wanted.setdefault(id(tokens), (tokens, set()))[1].add(name)

    def get(self, tokens: torch.Tensor, name: str) -> torch.Tensor:
        key = id(tokens)
        done = self.done.setdefault(key, Cache())
        if name not in done:  # one pass for everything wanted from this batch so far
            toks, names = self.wanted[key]
            captures = {n: parse_capture(n, self.model) for n in names if n not in done}
            hs = HookSet(self.model, [], captures)
            try:
                with torch.no_grad():
                    self.model(toks)
            finally:
                hs.remove()
            done.update(hs.captured)
        return done[name]


def _reference_tokens(iv: Ablate) -> tuple[torch.Tensor, Mapping[str, torch.Tensor] | None]:
    ref = iv.reference
    if isinstance(ref, torch.Tensor):
        return ref, None
    attr = "corrupted" if iv.mode == "resample" else "clean"
    toks = getattr(ref, attr, None)
    if isinstance(toks, torch.Tensor):
        return toks, getattr(ref, "positions", None)
    raise InterventionError(
        f"Ablate({iv.mode}) reference must be a token tensor or a Task, got {type(ref).__name__}",
        fix="pass reference=task.corrupted",
    )


def _prepare_source(
    e: Edit,
    iv: Intervention,
    node: Node,
    refs: _References,
    run_tokens: torch.Tensor | None,
    positions: Mapping[str, torch.Tensor] | None,
) -> None:
    name = _capture_name(node, e.slot)
    if isinstance(iv, Patch):
        src = iv.source
        if isinstance(src, Mapping):
            if name not in src:
                raise InterventionError(
                    f"Patch at {iv.site}: the source cache has no {name!r} (has {sorted(src)[:8]})",
                    fix=f"capture {name!r} in the source run: engine.run(..., capture=[{name!r}])",
                )
            src = src[name]
        if not isinstance(src, torch.Tensor) or src.dim() < 2:
            raise InterventionError(
                f"Patch at {iv.site}: source must be a Cache or a [batch, pos, width] tensor",
                fix="pass the Cache returned by engine.run",
            )
        _check_ref_shape(iv, src, run_tokens, e.sel)
        e.source, e.source_mode = src.to(torch.device(refs.model.device)), "aligned"
        return
    assert isinstance(iv, Ablate)
    ref_tokens, ref_positions = _reference_tokens(iv)
    if ref_tokens.dim() != 2:
        raise InterventionError(
            f"reference tokens must be [batch, pos], got {tuple(ref_tokens.shape)}",
            fix="pass a 2-D LongTensor such as task.corrupted",
        )
    refs.want(ref_tokens, name)
    if iv.mode == "resample":
        _check_ref_shape(iv, ref_tokens, run_tokens, e.sel)
        e.source, e.source_mode = _Lazy(refs, ref_tokens, name), "aligned"
        return
    # mean
    if e.sel.kind == "per_example":
        spec = iv.site.positions if isinstance(iv.site.positions, tuple) else (iv.site.positions,)
        pos_map = ref_positions if ref_positions is not None else positions
        if pos_map is not None and any(isinstance(p, str) for p in spec):
            first = next(pos_map[p] for p in spec if isinstance(p, str) and p in pos_map)
            if first.shape[0] != ref_tokens.shape[0]:
                raise PositionError(
                    f"mean ablation at {iv.site}: named positions are for {first.shape[0]} examples "
                    f"but the reference has {ref_tokens.shape[0]}",
                    fix="pass the reference as a Task (its own positions), or reference tokens of the same batch",
                )
        ref_sel = resolve(iv.site.positions, pos_map, 0, None)
        e.source, e.source_mode = _Lazy(refs, ref_tokens, name, mean_sel=ref_sel), "values"
    else:
        e.source, e.source_mode = (
            _Lazy(refs, ref_tokens, name, mean_over_batch=True),
            "mean_positions",
        )


class _Lazy:
    """A reference-derived source, computed on first use (one capture pass per reference batch)."""

    def __init__(self, refs, tokens, name, mean_sel: Selector | None = None, mean_over_batch=False):
        self.refs, self.tokens, self.name = refs, tokens, name
        self.mean_sel, self.mean_over_batch = mean_sel, mean_over_batch
        self.value: torch.Tensor | None = None

    def resolve(self) -> torch.Tensor:
        if self.value is None:
            act = self.refs.get(self.tokens, self.name)  # captures are already narrowed to the site
            if self.mean_sel is not None:
                act = self.mean_sel.get(act).mean(0)  # [k, width]: mean at each named position
            elif self.mean_over_batch:
                act = act.mean(0)  # [pos, width]
            self.value = act
        return self.value


def _check_ref_shape(
    iv: Intervention, ref: torch.Tensor, run_tokens: torch.Tensor | None, sel: Selector
) -> None:
    n = sel.n if sel.n is not None else (run_tokens.shape[0] if run_tokens is not None else None)
    if run_tokens is not None and (ref.shape[0] != n or ref.shape[1] != run_tokens.shape[1]):
        raise InterventionError(
            f"{type(iv).__name__} at {iv.site}: reference/source has shape {tuple(ref.shape[:2])} but the "
            f"tokens are {(n, run_tokens.shape[1])}",
            fix="resample and patch match example by example: pass data of the same [batch, pos] "
            "(e.g. task.corrupted for task.clean)",
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
    refs: _References,
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
            _prepare_source(e, iv, node, refs, run_tokens, positions)
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


def _resolve_sources(edits: list[Edit]) -> None:
    for e in edits:
        if isinstance(e.source, _Lazy):
            value = e.source.resolve()
            if e.source_mode == "mean_positions":
                e.source, e.source_mode = value, "aligned_mean"
            else:
                e.source = value


def _bind_mean_positions(edits: list[Edit]) -> None:
    """Per-position means ``[pos, width]`` become ``fn`` closures that index the forward's positions."""
    for e in edits:
        if e.source_mode != "aligned_mean" or e.source is None:
            continue
        mean, sel = e.source, e.sel
        e.source, e.source_mode = None, ""

        def fn(x, _src, mean=mean, sel=sel):
            seq = x.shape[1] if sel.kind == "all" else None
            if seq is not None and seq != mean.shape[0]:
                raise InterventionError(
                    f"mean ablation at {sel}: the reference has {mean.shape[0]} positions, the forward {seq}",
                    fix="mean over all positions needs reference tokens of the same length; or name positions",
                )
            vals = mean if sel.kind == "all" else sel.get(mean[None], relative=True)[0]
            return vals.to(x.dtype).expand_as(x)

        e.fn = fn


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
    refs = _References(model)
    edits = compile_plan(model, interventions, positions, refs, tokens)
    _resolve_sources(edits)
    _bind_mean_positions(edits)
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
    refs = _References(model)
    captures = {name: parse_capture(name, model) for name in capture or ()}
    outs: list[torch.Tensor] = []
    caps: dict[str, list[torch.Tensor]] = {n: [] for n in captures}
    for start in range(0, len(variants), per_chunk):
        chunk = variants[start : start + per_chunk]
        edits: list[Edit] = []
        for j, ivs in enumerate(chunk):
            edits += compile_plan(model, ivs, pos, refs, toks, row0=j * B, n=B)
        _resolve_sources(edits)
        _bind_mean_positions(edits)
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
