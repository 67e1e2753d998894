"""Resolving a site's positions to an index into ``[batch, pos, width]`` activations.

A :class:`Selector` picks rows (a contiguous block of the batch: all of it, or one variant's
block in a stacked ``run_variants`` batch) and positions: all of them, the same fixed positions
in every row, or one set per example (named positions such as ``END``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from circuitsteer.errors import PositionError
from circuitsteer.interventions import PositionSpec


@dataclass
class Selector:
    """Rows ``[row0, row0 + n)`` (``n`` None: the whole batch) and positions.

    ``kind``: ``"all"``; ``"fixed"`` (``fixed`` ints or a slice, the same for every row);
    ``"per_example"`` (``per_example`` LongTensor ``[n, k]``).
    """

    kind: str
    row0: int = 0
    n: int | None = None
    fixed: tuple[int, ...] | slice | None = None
    per_example: torch.Tensor | None = None
    _index_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _max_pos: int = -1

    def __post_init__(self) -> None:
        if self.per_example is not None:
            self._max_pos = int(self.per_example.max())  # once, not per forward (a GPU sync)

    def rows(self, batch: int) -> slice:
        return slice(self.row0, batch if self.n is None else self.row0 + self.n)

    def _fixed_index(self, seq: int) -> torch.Tensor | slice:
        if isinstance(self.fixed, slice):
            return self.fixed
        assert self.fixed is not None
        idx = [p + seq if p < 0 else p for p in self.fixed]
        bad = [p for p, i in zip(self.fixed, idx, strict=True) if not 0 <= i < seq]
        if bad:
            raise PositionError(
                f"positions {bad} are outside the sequence of length {seq}",
                fix=f"use positions in -{seq}..{seq - 1}",
            )
        if idx == list(range(idx[0], idx[0] + len(idx))):
            return slice(idx[0], idx[0] + len(idx))  # a view: no gather/scatter kernels, no copy
        return torch.tensor(idx, dtype=torch.long)

    def _rows_pos(self, rows: slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and position index tensors, made once per device (no host-to-device copy per call)."""
        assert self.per_example is not None
        key = (rows.start, device)
        cached = self._index_cache.get(key)
        if cached is None:
            n = self.per_example.shape[0]
            r = torch.arange(rows.start, rows.start + n, device=device)[:, None]
            cached = self._index_cache[key] = (r, self.per_example.to(device))
        return cached

    def check(self, act: torch.Tensor) -> None:
        batch = act.shape[0]
        if self.n is not None and self.row0 + self.n > batch:
            raise PositionError(
                f"this intervention was compiled for {self.row0 + self.n} examples but the forward has {batch}",
                fix="run the same batch the named positions / reference data were given for",
            )
        if self._max_pos >= act.shape[1]:
            raise PositionError(
                f"a named position ({self._max_pos}) is past the sequence length {act.shape[1]}",
                fix="pass the tokens the task's positions belong to",
            )

    def get(self, act: torch.Tensor, relative: bool = False) -> torch.Tensor:
        """Selected values ``[n, k, width]`` (a copy for indexed selections, a view for slices).

        ``relative``: index rows from 0 (for per-example source tensors of the base batch).
        """
        rows = slice(0, self.n) if relative and self.n is not None else self.rows(act.shape[0])
        if self.kind == "all":
            return act[rows]
        if self.kind == "fixed":
            return act[rows][:, self._fixed_index(act.shape[1])]
        r, pos = self._rows_pos(rows, act.device)
        return act[r, pos]

    def put(self, act: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` (shaped like ``get``'s result) into ``act`` in place."""
        rows = self.rows(act.shape[0])
        if self.kind == "all":
            act[rows] = values
        elif self.kind == "fixed":
            idx = self._fixed_index(act.shape[1])
            if isinstance(idx, slice):
                act[rows, idx] = values
            else:
                act[rows.start : rows.stop, idx.to(act.device)] = values
        else:
            r, pos = self._rows_pos(rows, act.device)
            act[r, pos] = values

    def mask(self, batch: int, seq: int, device: torch.device | None = None) -> torch.Tensor:
        """Bool ``[batch, seq]``: True where this selector acts (used for overlap checks)."""
        m = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        self.put(m[..., None], torch.ones((), dtype=torch.bool, device=device))
        return m


def resolve(
    spec: PositionSpec,
    named: Mapping[str, torch.Tensor] | None,
    row0: int = 0,
    n: int | None = None,
) -> Selector:
    """Turn a site's ``positions`` into a Selector.

    >>> resolve("all", None).kind
    'all'
    >>> resolve(3, None).fixed
    (3,)
    >>> resolve("END", {"END": torch.tensor([4, 6])}).per_example.tolist()
    [[4], [6]]
    """
    if isinstance(spec, str) and spec == "all":
        return Selector("all", row0, n)
    if isinstance(spec, slice):
        return Selector("fixed", row0, n, fixed=spec)
    items = spec if isinstance(spec, tuple) else (spec,)
    if all(isinstance(p, int) for p in items):
        return Selector("fixed", row0, n, fixed=tuple(int(p) for p in items))  # type: ignore[arg-type]
    cols = []
    for p in items:
        if isinstance(p, int):
            if p < 0:
                raise PositionError(
                    f"negative position {p} mixed with named positions",
                    fix="use non-negative ints with named positions (rows are right-padded)",
                )
            cols.append(p)
            continue
        if p == "all":
            raise PositionError('"all" cannot be mixed with other positions', fix='use "all" alone')
        if not named or p not in named:
            have = ", ".join(sorted(named)) if named else "none (no task or positions were passed)"
            raise PositionError(
                f"named position {p!r} is not defined; defined: {have}",
                fix="pass the task (engine.run(model, task, ...)) or positions={name: indices}, "
                "and use one of its position names",
            )
        cols.append(named[p].long().reshape(-1))
    batch = next(c.shape[0] for c in cols if isinstance(c, torch.Tensor))
    if n is not None and batch != n:
        raise PositionError(
            f"named positions are given for {batch} examples but the batch has {n}",
            fix="pass the positions of the tokens being run",
        )
    full = [
        c if isinstance(c, torch.Tensor) else torch.full((batch,), c, dtype=torch.long)
        for c in cols
    ]
    return Selector("per_example", row0, batch, per_example=torch.stack(full, dim=1))
