"""Reference-derived values for ops that declare a ``source_kind``: ``mean`` / ``resample``
ablation and ``patch``.

Each reference batch is run once per call, capturing every site any intervention needs from it;
the values are then shaped for the sites' selectors (aligned example by example, a mean per
named position, or a mean per position index over the rows that are real tokens there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from circuitsteer.engine.chunking import rows_per_forward, spans
from circuitsteer.engine.hooks import HookSet
from circuitsteer.engine.plan import Edit, capture_slot, source_point
from circuitsteer.engine.positions import Selector, resolve
from circuitsteer.errors import InterventionError, PositionError
from circuitsteer.interventions import Op
from circuitsteer.nodes import Node, capture_name


class Cache(dict):
    """Captured activations by capture name (``a9.h9`` -> z ``[batch, pos, d_head]`` ...)."""


class References:
    """Runs each reference batch once, capturing every slot the plan needs from it (in forwards
    of at most ``rows`` rows, so a large reference batch stays within the memory budget; means
    are still taken over the whole batch)."""

    def __init__(self, model: Any, rows: int | None = None) -> None:
        self.model = model
        self.rows = rows
        self.wanted: dict[int, tuple[torch.Tensor, set[str]]] = {}
        self.done: dict[int, Cache] = {}

    def want(self, tokens: torch.Tensor, name: str) -> None:
        self.wanted.setdefault(id(tokens), (tokens, set()))[1].add(name)

    def get(self, tokens: torch.Tensor, name: str) -> torch.Tensor:
        key = id(tokens)
        done = self.done.setdefault(key, Cache())
        if name not in done:  # one pass for everything wanted from this batch so far
            toks, names = self.wanted[key]
            captures = {n: capture_slot(n, self.model) for n in names if n not in done}
            n = toks.shape[0]
            step = self.rows or rows_per_forward(self.model, toks.shape[1])
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in captures}
            hs = HookSet(self.model, [], captures)
            try:
                with torch.no_grad():
                    for a, b in spans(n, step):
                        self.model(toks[a:b])
                        for k, v in hs.captured.items():
                            parts[k].append(v)
            finally:
                hs.remove()
            done.update({k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()})
        return done[name]


def _real_mask(obj: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """``[batch, pos]`` True on real tokens, from an object with ``lengths`` (a Task)."""
    lengths = getattr(obj, "lengths", None)
    if not isinstance(lengths, torch.Tensor) or lengths.shape[0] != tokens.shape[0]:
        return None
    return torch.arange(tokens.shape[1])[None, :] < lengths.cpu()[:, None]


def _reference_tokens(
    iv: Op, run_task: Any
) -> tuple[torch.Tensor, Mapping[str, torch.Tensor] | None, torch.Tensor | None]:
    """(tokens, named positions, real-token mask) of an op's reference. A Task gives its own
    positions and lengths; a token tensor that is the running task's clean or corrupted batch
    gets that task's lengths; other token tensors count every position as real."""
    ref = iv.source_data()
    if isinstance(ref, torch.Tensor):
        same = run_task is not None and any(
            getattr(run_task, a, None) is ref for a in ("clean", "corrupted")
        )
        return ref, None, _real_mask(run_task, ref) if same else None
    toks = getattr(ref, "corrupted" if iv.source_kind == "resample" else "clean", None)
    if isinstance(toks, torch.Tensor):
        return toks, getattr(ref, "positions", None), _real_mask(ref, toks)
    raise InterventionError(
        f"{type(iv).__name__}({iv.source_kind}) reference must be a token tensor or a Task, "
        f"got {type(ref).__name__}",
        fix="pass reference=task.corrupted",
    )


def prepare_source(
    e: Edit,
    node: Node,
    refs: References,
    run_tokens: torch.Tensor | None,
    positions: Mapping[str, torch.Tensor] | None,
    run_task: Any = None,
    window: slice | None = None,
) -> None:
    """Attach the values an op with a ``source_kind`` reads to its edit (lazily: references run
    once, after every edit of the call has said what it wants).

    ``window``: the rows of ``run_tokens`` this forward runs (a chunk of a larger batch);
    aligned sources (patch, resample) are cut to it, means stay over the whole reference."""
    iv = e.iv
    name = capture_name(node, source_point(e.slot))
    if iv.source_kind == "patch":
        src = iv.source_data()
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
        _check_ref_shape(iv, src, run_tokens, e.sel, window)
        if window is not None:
            src = src[window]
        e.source, e.source_mode = src.to(torch.device(refs.model.device)), "aligned"
        return
    ref_tokens, ref_positions, mask = _reference_tokens(iv, run_task)
    if ref_tokens.dim() != 2:
        raise InterventionError(
            f"reference tokens must be [batch, pos], got {tuple(ref_tokens.shape)}",
            fix="pass a 2-D LongTensor such as task.corrupted",
        )
    refs.want(ref_tokens, name)
    if iv.source_kind == "resample":
        _check_ref_shape(iv, ref_tokens, run_tokens, e.sel, window)
        e.source, e.source_mode = Lazy(refs, ref_tokens, name, rows=window), "aligned"
        return
    if iv.source_kind != "mean":
        raise InterventionError(
            f"{type(iv).__name__} declares an unknown source_kind {iv.source_kind!r}",
            fix="use 'patch', 'resample' or 'mean'",
        )
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
        e.source, e.source_mode = Lazy(refs, ref_tokens, name, mean_sel=ref_sel), "values"
    else:
        e.source, e.source_mode = (
            Lazy(refs, ref_tokens, name, mean_over_batch=True, mask=mask),
            "mean_positions",
        )


class Lazy:
    """A reference-derived source, computed on first use (one capture pass per reference batch)."""

    def __init__(
        self,
        refs: References,
        tokens: torch.Tensor,
        name: str,
        mean_sel: Selector | None = None,
        mean_over_batch: bool = False,
        mask: torch.Tensor | None = None,
        rows: slice | None = None,
    ) -> None:
        self.refs, self.tokens, self.name, self.rows = refs, tokens, name, rows
        self.mean_sel, self.mean_over_batch, self.mask = mean_sel, mean_over_batch, mask
        self.value: torch.Tensor | None = None

    def resolve(self) -> torch.Tensor:
        if self.value is None:
            act = self.refs.get(self.tokens, self.name)  # captures are already narrowed to the site
            if self.mean_sel is not None:
                act = self.mean_sel.get(act).mean(0)  # [k, width]: mean at each named position
            elif self.mean_over_batch:
                act = masked_mean(act, self.mask)  # [pos, width]
            elif self.rows is not None:
                act = act[self.rows]
            self.value = act
        return self.value


def masked_mean(act: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch at each position, over the rows that are real tokens there
    (``mask [batch, pos]``); a position with no real row (padding everywhere) takes the plain
    mean, which only padding positions read.

    >>> masked_mean(torch.tensor([[[1.0], [2.0]], [[3.0], [9.0]]]), torch.tensor([[True, True], [True, False]]))
    tensor([[2.],
            [2.]])
    """
    if mask is None:
        return act.mean(0)
    m = mask.to(device=act.device, dtype=act.dtype)[..., None]
    count = m.sum(0)
    real = (act * m).sum(0) / count.clamp(min=1)
    return torch.where(count > 0, real, act.mean(0))


def _check_ref_shape(
    iv: Op,
    ref: torch.Tensor,
    run_tokens: torch.Tensor | None,
    sel: Selector,
    window: slice | None = None,
) -> None:
    n = sel.n if sel.n is not None else (run_tokens.shape[0] if run_tokens is not None else None)
    if window is not None and run_tokens is not None:
        n = run_tokens.shape[0]
    if run_tokens is not None and (ref.shape[0] != n or ref.shape[1] != run_tokens.shape[1]):
        raise InterventionError(
            f"{type(iv).__name__} at {iv.site}: reference/source has shape {tuple(ref.shape[:2])} but the "
            f"tokens are {(n, run_tokens.shape[1])}",
            fix="resample and patch match example by example: pass data of the same [batch, pos] "
            "(e.g. task.corrupted for task.clean)",
        )


def resolve_sources(edits: list[Edit]) -> None:
    for e in edits:
        if isinstance(e.source, Lazy):
            value = e.source.resolve()
            if e.source_mode == "mean_positions":
                e.source, e.source_mode = value, "aligned_mean"
            else:
                e.source = value


def bind_mean_positions(edits: list[Edit]) -> None:
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
