"""Collecting activations at sites, streamed in chunks with a progress bar.

Data (``data`` below) is any of:

* a :class:`~circuitsteer.tasks.Task`: its ``clean`` tokens, real lengths and named positions
  (:func:`corrupted_side` gives a Task whose clean side is the corrupted prompts);
* a LongTensor ``[batch, pos]`` (every token counts as real) or ``[pos]`` (one prompt);
* a list of strings (tokenized one by one, BOS first, right-padded);
* an iterable of the above (a generator of token batches, for data that does not fit in memory):
  it is consumed lazily, piece by piece.

Each piece is split into forwards within the engine's memory budget (``batch_size`` rows at
most, see :mod:`circuitsteer.engine.chunking`), each forward's activations are selected at
``positions`` (on real tokens only) and handed on, and nothing else is kept: the consumers
(:func:`stream_into`) fold them into running sums, so memory does not grow with the dataset.

``positions``: ``"all"`` (every real token; the first token is left out unless
``exclude_first=False``: it is BOS in every prompt, an outlier in norm, and carries nothing about
the prompt), a named position of the task (``"END"``), an int (``>= 0``: that index; ``< 0``:
from each prompt's real end, ``-1`` is its last real token), or a list of names/ints (one row
per example and entry, example-major).

Example:
    >>> import torch, circuitsteer as cs
    >>> m = cs.random_gpt2(n_layers=2, n_heads=4, d_model=32)
    >>> toks = torch.randint(0, 256, (3, 5))
    >>> activations(m, toks, "resid_pre.1", positions=-1).shape
    torch.Size([3, 32])
    >>> activations(m, toks, "a0.h1", positions="all").shape   # 3 x 4 tokens after the first
    torch.Size([12, 8])
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from circuitsteer import engine
from circuitsteer.engine.chunking import progress as show_progress
from circuitsteer.engine.chunking import quiet, rows_per_forward, spans
from circuitsteer.errors import PositionError
from circuitsteer.vectors._site import canonical, site_width
from circuitsteer.vectors.errors import VectorError

Positions = str | int | Sequence[str | int]


@dataclass(frozen=True)
class Piece:
    """Rows of data: tokens ``[n, pos]``, real ``lengths`` ``[n]``, named positions."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    positions: Mapping[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class Chunk:
    """One forward's selected activations: ``values[site]`` ``[m, width]`` (on the model's
    device), with the ``example`` (index in the data) and token ``position`` of each row."""

    values: dict[str, torch.Tensor]
    example: torch.Tensor
    position: torch.Tensor


def _is_task(x: Any) -> bool:
    return isinstance(getattr(x, "clean", None), torch.Tensor) and hasattr(x, "lengths")


def corrupted_side(task: Any) -> Any:
    """The task with clean and corrupted swapped (collect the corrupted prompts)."""
    if not _is_task(task):
        raise VectorError(f"expected a Task, got {type(task).__name__}", fix="pass a cs.tasks Task")
    return replace(
        task,
        clean=task.corrupted,
        corrupted=task.clean,
        prompts=task.corrupted_prompts,
        corrupted_prompts=task.prompts,
    )


def split_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """``(a, b)``; with ``b`` None and ``a`` a Task: its clean and corrupted prompts."""
    if b is None:
        if not _is_task(a):
            raise VectorError(
                "b is missing", fix="pass two datasets a and b, or one Task (clean vs corrupted)"
            )
        return a, corrupted_side(a)
    return a, b


def _strings(model: Any, texts: Sequence[str]) -> Piece:
    tk = model.tokenizer
    rows = [[model.bos_token_id, *tk.encode(t, add_special_tokens=False)] for t in texts]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    pad = tk.pad_token_id if tk.pad_token_id is not None else model.bos_token_id
    out = torch.full((len(rows), int(lengths.max())), int(pad), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return Piece(out, lengths)


def _piece(model: Any, x: Any) -> Piece | None:
    """One piece, or None when ``x`` is an iterable of pieces."""
    if _is_task(x):
        return Piece(x.clean, x.lengths.to(x.clean.device), x.positions)
    if isinstance(x, torch.Tensor):
        if x.dtype in (
            torch.float16,
            torch.bfloat16,
            torch.float32,
            torch.float64,
        ) or x.dim() not in (1, 2):
            raise VectorError(
                f"token tensors must be integer [batch, pos] or [pos], got {x.dtype} {tuple(x.shape)}",
                fix="pass token ids (model.to_tokens(...)) or a Task",
            )
        t = x[None] if x.dim() == 1 else x
        return Piece(t.long(), torch.full((t.shape[0],), t.shape[1], dtype=torch.long))
    if isinstance(x, str):
        return _strings(model, [x])
    if isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x):
        return _strings(model, x)
    return None


def pieces(model: Any, data: Any) -> tuple[Iterator[Piece], int | None]:
    """The data as pieces, and the number of examples when known without consuming it."""
    p = _piece(model, data)
    if p is not None:
        if len(p) == 0:
            raise VectorError("the data has no examples", fix="pass at least one prompt")
        return iter([p]), len(p)
    if isinstance(data, (Mapping, bytes)) or not isinstance(data, Iterable):
        raise VectorError(
            f"cannot read activations data of type {type(data).__name__}",
            fix="pass a Task, a token tensor [batch, pos], a list of strings, or an iterable of these",
        )

    def gen() -> Iterator[Piece]:
        for item in data:
            q = _piece(model, item)
            if q is None:
                raise VectorError(
                    f"an item of the data stream is a {type(item).__name__}",
                    fix="each item must be a Task, a token tensor or a list of strings",
                )
            if len(q):
                yield q

    return gen(), None


def describe(data: Any) -> Any:
    """A JSON-serializable description of ``data`` for provenance."""
    if _is_task(data):
        return {
            "task": str(getattr(data, "name", "task")),
            "n": len(data.clean),
            "first_prompt": (getattr(data, "prompts", None) or [None])[0],
        }
    if isinstance(data, torch.Tensor):
        return {"tokens": list(data.shape)}
    if isinstance(data, str):
        return {"text": data}
    if isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data):
        return {"texts": len(data), "first": data[0]}
    return {"stream": type(data).__name__}


def describe_positions(positions: Positions, exclude_first: bool) -> Any:
    p = list(positions) if isinstance(positions, (list, tuple)) else positions
    if p == "all":
        return {"positions": "all", "exclude_first": exclude_first}
    return p


def _check_positions(positions: Positions) -> list[str | int]:
    items: list[Any] = list(positions) if isinstance(positions, (list, tuple)) else [positions]
    if not items:
        raise VectorError("empty position list", fix='give at least one position, or "all"')
    for p in items:
        if isinstance(p, bool) or not isinstance(p, (str, int)):
            raise VectorError(
                f"position {p!r} not understood",
                fix='use "all", a named position such as "END", an int, or a list of these',
            )
    if "all" in items and len(items) > 1:
        raise VectorError(f'"all" cannot be combined with {items}', fix='use "all" alone')
    return items


def select(
    piece: Piece, rows: slice, positions: Positions, exclude_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(example, position)`` index tensors (example relative to ``rows.start``) of the
    activations to take from rows ``rows`` of ``piece``; every index lies on a real token."""
    items = _check_positions(positions)
    lengths = piece.lengths[rows]
    n = lengths.shape[0]
    if items == ["all"]:
        width = int(lengths.max())
        real = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        if exclude_first:
            real[:, 0] = False
        ex, pos = real.nonzero(as_tuple=True)
        return ex, pos
    cols = []
    for p in items:
        if isinstance(p, str):
            named = piece.positions or {}
            if p not in named:
                have = ", ".join(named) or "none (named positions need a Task)"
                raise PositionError(f"no position {p!r} in the data", fix=f"use one of: {have}")
            idx = named[p][rows].to(lengths.device).long()
        else:
            idx = (lengths + p) if p < 0 else torch.full_like(lengths, p)
        bad = (idx < 0) | (idx >= lengths)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise PositionError(
                f"position {p!r} is {int(idx[i])} in example {rows.start + i}, outside its "
                f"{int(lengths[i])} real tokens",
                fix="use positions inside every prompt (negative ints count from each prompt's end)",
            )
        cols.append(idx)
    pos = torch.stack(cols, dim=1).reshape(-1)
    ex = torch.arange(n, device=lengths.device).repeat_interleave(len(cols))
    return ex, pos


def _bar(items: Iterable[Any], total: int | None, desc: str, enabled: bool | None):
    if total is not None:
        return show_progress(items, total, desc, enabled)
    if enabled is False or (enabled is None and quiet()):
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, delay=2.0, leave=False, file=sys.stderr)


def stream(
    model: Any,
    data: Any,
    sites: str | Sequence[str],
    positions: Positions = "all",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
    desc: str = "collect",
) -> Iterator[Chunk]:
    """Yield one :class:`Chunk` per forward over ``data`` (see the module docstring).

    Each forward runs at most ``batch_size`` rows within ``max_bytes`` (the engine's budget) and
    is trimmed to its longest real prompt."""
    names = [canonical(s) for s in ([sites] if isinstance(sites, str) else sites)]
    if not names:
        raise VectorError("no sites given", fix="name at least one site, e.g. 'resid_pre.1'")
    for s in names:
        site_width(model, s)  # validate against the model before any forward
    _check_positions(positions)
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
        raise VectorError(
            f"batch_size must be positive, got {batch_size}", fix="pass batch_size >= 1"
        )
    it, n_total = pieces(model, data)

    def rows_for(p: Piece) -> int:
        return rows_per_forward(model, p.tokens.shape[1], batch_size, max_bytes)

    total = None
    if n_total is not None:  # data of known size: count its forwards for the bar
        known = list(it)
        total = sum(len(spans(len(p), rows_for(p))) for p in known)
        it = iter(known)
    steps = ((p, a, b) for p in it for a, b in spans(len(p), rows_for(p)))
    seen, start, last = 0, 0, None
    for piece, a, b in _bar(steps, total, desc, progress):
        if piece is not last:  # a new piece: its examples follow the previous ones
            start, last = seen, piece
            seen += len(piece)
        rows = slice(a, b)
        ex, pos = select(piece, rows, positions, exclude_first)
        width = int(piece.lengths[rows].max())
        toks = piece.tokens[a:b, :width]
        _, cache = engine.run(model, toks, capture=names, progress=False, max_bytes=max_bytes)
        dev = cache[names[0]].device
        ex_d, pos_d = ex.to(dev), pos.to(dev)
        yield Chunk(
            values={s: cache[s][ex_d, pos_d].detach() for s in names},
            example=(ex + start + a).cpu(),
            position=pos.cpu(),
        )


@dataclass(frozen=True)
class Collected:
    """Activations held in memory: ``values[site]`` ``[N, width]`` (CPU), with the ``example``
    and ``position`` of each row."""

    values: dict[str, torch.Tensor]
    example: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return self.example.shape[0]


def collect(
    model: Any,
    data: Any,
    sites: str | Sequence[str],
    positions: Positions = "all",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> Collected:
    """Every selected activation at ``sites`` in memory (CPU). For large data prefer the
    streaming functions (mean difference, PCA), which keep only running sums."""
    names = [canonical(s) for s in ([sites] if isinstance(sites, str) else sites)]
    vals: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    exs, poss = [], []
    for ch in stream(model, data, names, positions, exclude_first, batch_size, max_bytes, progress):
        for s in names:
            vals[s].append(ch.values[s].cpu())
        exs.append(ch.example)
        poss.append(ch.position)
    return Collected({s: torch.cat(v) for s, v in vals.items()}, torch.cat(exs), torch.cat(poss))


def activations(
    model: Any,
    data: Any,
    site: str,
    positions: Positions = "all",
    exclude_first: bool = True,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``[N, width]`` activations at one site (CPU), rows in data order (example-major)."""
    c = collect(model, data, site, positions, exclude_first, batch_size, max_bytes, progress)
    return c.values[canonical(site)]
