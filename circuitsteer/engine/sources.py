"""Reference-derived values for ops that declare a ``source_kind``: ``mean`` / ``resample``
ablation and ``patch``.

Each reference batch is run once per call, capturing every site any intervention needs from it;
the values are then shaped for the sites' selectors (aligned example by example, a mean per
named position, or a mean per position index over the rows that are real tokens there).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
    """Reference runs for the sources of one call, in memory that does not grow with the batch.

    * aligned sources (resample) are captured one window at a time: the rows of the reference
      that the current forward runs, computed when that forward first asks and dropped when
      the next window is asked for (callers visit windows in order, so each runs once);
    * means are streamed: one pass over the whole reference (forwards of at most ``rows``
      rows) feeds running sums for every mean registered on that batch, and only the
      ``[pos, width]`` / ``[k, width]`` results are kept.
    """

    def __init__(self, model: Any, rows: int | None = None) -> None:
        self.model = model
        self.rows = rows
        self.wanted: dict[int, tuple[torch.Tensor, set[str]]] = {}
        self.windows: dict[int, tuple[tuple[int, int], Cache]] = {}  # batch -> latest window
        self.means: dict[int, dict[Any, _Mean]] = {}  # batch -> key -> running mean
        self.done: dict[int, bool] = {}  # batch -> its mean pass ran

    def want(self, tokens: torch.Tensor, name: str) -> None:
        self.wanted.setdefault(id(tokens), (tokens, set()))[1].add(name)

    def want_mean(self, tokens: torch.Tensor, name: str, key: Any, mean: _Mean) -> None:
        """Register a mean of capture ``name`` over ``tokens`` (``key``: equal for the same
        mean asked again by another chunk's compile, which then reuses it)."""
        self.want(tokens, name)
        self.means.setdefault(id(tokens), {}).setdefault((name, key), mean)

    def _forward(self, toks: torch.Tensor, names: set[str]) -> Iterator[tuple[int, int, Cache]]:
        """Capture ``names`` over ``toks`` in forwards of at most ``rows`` rows."""
        captures = {n: capture_slot(n, self.model) for n in names}
        step = self.rows or rows_per_forward(self.model, toks.shape[1])
        hs = HookSet(self.model, [], captures)
        try:
            with torch.no_grad():
                for a, b in spans(toks.shape[0], step):
                    self.model(toks[a:b])
                    yield a, b, Cache(hs.captured)
        finally:
            hs.remove()

    def get(self, tokens: torch.Tensor, name: str, window: slice | None = None) -> torch.Tensor:
        """Capture ``name`` on the rows ``window`` of ``tokens`` (all rows: None)."""
        key = id(tokens)
        toks, names = self.wanted[key]
        a, b = (0, toks.shape[0]) if window is None else (window.start, window.stop)
        held = self.windows.get(key)
        if held is None or held[0] != (a, b) or name not in held[1]:
            self.windows.pop(key, None)  # free the previous window first
            parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            for _, _, cap in self._forward(toks[a:b], names):
                for n, v in cap.items():
                    parts[n].append(v)
            held = (
                (a, b),
                Cache({n: v[0] if len(v) == 1 else torch.cat(v) for n, v in parts.items()}),
            )
            self.windows[key] = held
        return held[1][name]

    def mean(self, tokens: torch.Tensor, name: str, key: Any) -> torch.Tensor:
        """A registered mean; the first call runs the streaming pass for every mean of the batch."""
        tid = id(tokens)
        means = self.means[tid]
        if not self.done.get(tid):
            names = {n for n, _ in means}
            for a, b, cap in self._forward(tokens, names):
                for (n, _), m in means.items():
                    m.add(cap[n], a, b)
            self.done[tid] = True
        return means[(name, key)].result()


class _Mean:
    """A running mean over a reference batch, fed chunk by chunk (float64 sums, so chunking
    changes nothing beyond rounding; one chunk gives exactly the one-pass mean)."""

    def __init__(self, total: int, sel: Selector | None = None, mask: torch.Tensor | None = None):
        self.total, self.sel, self.mask = total, sel, mask
        self.parts: list[torch.Tensor] = []
        self.sums: list[torch.Tensor] | None = None
        self.dtype = torch.float32

    def _reduce(self, act: torch.Tensor, a: int, b: int) -> list[torch.Tensor]:
        if self.sel is not None:  # per named position: [k, width]
            assert self.sel.per_example is not None
            idx = self.sel.per_example[a:b].to(act.device)
            return [act[torch.arange(b - a, device=act.device)[:, None], idx].double().sum(0)]
        plain = act.double().sum(0)
        if self.mask is None:
            return [plain]
        m = self.mask[a:b].to(device=act.device, dtype=torch.float64)[..., None]
        return [plain, (act.double() * m).sum(0), m.sum(0)]

    def add(self, act: torch.Tensor, a: int, b: int) -> None:
        if a == 0 and b == self.total:  # the whole batch at once: the plain one-pass mean
            self.parts = [act]
            return
        self.dtype = act.dtype
        sums = self._reduce(act, a, b)
        self.sums = (
            sums if self.sums is None else [x + y for x, y in zip(self.sums, sums, strict=True)]
        )

    def result(self) -> torch.Tensor:
        if self.parts:
            act = self.parts[0]
            if self.sel is not None:
                return self.sel.get(act).mean(0)
            return masked_mean(act, self.mask)
        assert self.sums is not None
        if self.sel is not None or self.mask is None:
            return (self.sums[0] / self.total).to(self.dtype)
        plain, real, count = self.sums
        out = torch.where(count > 0, real / count.clamp(min=1), plain / self.total)
        return out.to(self.dtype)


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
        key = ("named", spec)
        if (name, key) not in refs.means.get(id(ref_tokens), {}):
            ref_sel = resolve(iv.site.positions, pos_map, 0, None)
            refs.want_mean(ref_tokens, name, key, _Mean(ref_tokens.shape[0], sel=ref_sel))
        e.source, e.source_mode = Lazy(refs, ref_tokens, name, mean_key=key), "values"
    else:
        key = ("batch", mask is not None)
        refs.want_mean(ref_tokens, name, key, _Mean(ref_tokens.shape[0], mask=mask))
        e.source, e.source_mode = Lazy(refs, ref_tokens, name, mean_key=key), "mean_positions"


class Lazy:
    """A reference-derived source, computed on first use: a registered mean (``mean_key``) or
    the reference's capture on the rows ``rows`` of the batch (aligned)."""

    def __init__(
        self,
        refs: References,
        tokens: torch.Tensor,
        name: str,
        mean_key: Any = None,
        rows: slice | None = None,
    ) -> None:
        self.refs, self.tokens, self.name = refs, tokens, name
        self.mean_key, self.rows = mean_key, rows
        self.value: torch.Tensor | None = None

    def resolve(self) -> torch.Tensor:
        if self.value is None:
            if self.mean_key is not None:
                self.value = self.refs.mean(self.tokens, self.name, self.mean_key)
            else:  # captures are already narrowed to the site
                self.value = self.refs.get(self.tokens, self.name, self.rows)
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
