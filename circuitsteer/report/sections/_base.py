"""What a report section is made of (headlines, tables, figures, notes) and the helpers the
section builders share: aggregation with intervals, labels, file-name slugs.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"node": ["a0.h1", "a0.h1", "m0"], "effect": [1.0, 3.0, -1.0]})
    >>> summarise(rows, ["node"], "effect")[["node", "effect", "ci"]].to_dict("records")
    [{'node': 'a0.h1', 'effect': 2.0, 'ci': 't'}, {'node': 'm0', 'effect': -1.0, 'ci': 'none'}]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from circuitsteer.report.stats import Interval, fmt, row_interval

MAX_DISPLAY_ROWS = 16


@dataclass
class Headline:
    """One measured statement, written by code from the numbers (``text``), and the number with
    its interval it rests on (``interval``)."""

    text: str
    interval: Interval | None = None


@dataclass
class Table:
    """A table: ``data`` is written to ``tables/<name>.csv`` at full precision; the report shows
    the same frame with numbers rounded (:func:`~circuitsteer.report.stats.fmt`), the first
    ``max_rows`` rows."""

    name: str
    title: str
    data: pd.DataFrame
    caption: str = ""
    max_rows: int = MAX_DISPLAY_ROWS

    def display(self) -> tuple[list[str], list[list[str]]]:
        """``(header, rows of cell strings)`` for the templates.

        >>> Table("t", "T", pd.DataFrame({"a": [1.23456], "b": ["x"]})).display()
        (['a', 'b'], [['1.235', 'x']])
        """
        head = [str(c) for c in self.data.columns]
        body = [[cell(v) for v in r] for r in self.data.head(self.max_rows).itertuples(index=False)]
        return head, body

    @property
    def truncated(self) -> bool:
        return len(self.data) > self.max_rows


@dataclass
class Figure:
    """A figure: written to ``figures/<name>.png`` and ``.svg``; ``png`` is filled on saving."""

    name: str
    title: str
    figure: Any
    caption: str = ""
    png: bytes = b""


@dataclass
class Section:
    """One analysis entry of the run as shown in the report."""

    id: str
    title: str
    kind: str
    about: str
    params: dict[str, Any] = field(default_factory=dict)
    headlines: list[Headline] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def cell(v: Any) -> str:
    """A table cell: numbers rounded by ``fmt``, integers as they are, missing as empty.

    >>> cell(3), cell(2.0), cell(None), cell(float("nan")), cell("a|b")
    ('3', '2.000', '', '', 'a|b')
    """
    try:
        missing = bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or array in a cell
        missing = False
    if missing:
        return ""
    if isinstance(v, (bool, str)):
        return str(v)
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return str(int(v))
    return fmt(v)


def slug(text: str, taken: set[str] | None = None) -> str:
    """A safe, unique file-name stem / HTML id for ``text``.

    >>> taken = set(); slug("Heads <1>|x", taken), slug("heads-1-x", taken)
    ('heads-1-x', 'heads-1-x-2')
    """
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"
    s = s[:60]
    if taken is not None:
        base, i = s, 2
        while s in taken:
            s, i = f"{base}-{i}", i + 1
        taken.add(s)
    return s


def has(df: Any, *cols: str) -> bool:
    """Whether ``df`` has all of ``cols``."""
    return all(c in df.columns for c in cols)


def summarise(rows: Any, keys: Sequence[str], column: str) -> pd.DataFrame:
    """One row per key: the mean of ``column`` over the rows of that key (the Parquet aggregate),
    ``<column>_lo/_hi`` (the row's own bootstrap interval when one row, else a t-interval over
    the rows), ``ci`` (the method) and ``rows`` (how many rows were pooled)."""
    keys = [k for k in keys if k in rows.columns]
    out = []
    groups = rows.groupby(keys, dropna=False, sort=False) if keys else [((), rows)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        iv = row_interval(g, column)
        rec: dict[str, Any] = dict(zip(keys, key, strict=True))
        rec.update({column: iv.value, f"{column}_lo": iv.lo, f"{column}_hi": iv.hi,
                    "ci": iv.method, "rows": len(g)})  # fmt: skip
        out.append(rec)
    return pd.DataFrame(out, columns=[*keys, column, f"{column}_lo", f"{column}_hi", "ci", "rows"])


def mean_of(rows: Any, keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Means of numeric ``columns`` per key (columns that are absent are skipped)."""
    keys = [k for k in keys if k in rows.columns]
    cols = [c for c in columns if c in rows.columns]
    d = rows[[*keys, *cols]].copy()
    for c in cols:
        d[c] = pd.to_numeric(d[c], errors="coerce")
    if not keys:
        return d[cols].mean().to_frame().T
    return d.groupby(keys, dropna=False, sort=False)[cols].mean().reset_index()


def first_metric(rows: Any, prefer: str = "logit_diff") -> str | None:
    """The metric a section's figures use: ``prefer`` when present, else the first one."""
    if "metric" not in rows.columns or rows["metric"].dropna().empty:
        return None
    ms = list(dict.fromkeys(rows["metric"].dropna().astype(str)))
    return prefer if prefer in ms else ms[0]


def value_column(rows: Any) -> str:
    """``effect`` (change from the clean run) when the rows have it, else ``value``."""
    return "effect" if "effect" in rows.columns and rows["effect"].notna().any() else "value"


def variant_label(r: Any) -> str:
    """A short label of an intervention row: ``a1.h3 ablate resample @S2``, ``resid_pre.2 add c=4``.

    >>> variant_label({"node": "a1.h3", "operation": "ablate", "mode": "resample", "positions": "S2"})
    'a1.h3 ablate resample @S2'
    """
    get = r.get if isinstance(r, dict) else lambda k, d=None: getattr(r, k, d)
    for col in ("variant", "label"):
        v = get(col)
        if isinstance(v, str) and v:
            return v
    parts = [str(get("node") or ""), str(get("operation") or "")]
    mode, coef, vec = get("mode"), get("coef"), get("vector")
    if isinstance(vec, str) and vec:
        parts.append(vec)
    if isinstance(mode, str) and mode:
        parts.append(mode)
    if coef is not None and _finite(coef):
        parts.append(f"c={float(coef):g}")
    pos = get("positions")
    if isinstance(pos, str) and pos and pos != "all":
        parts.append(f"@{pos}")
    return " ".join(p for p in parts if p)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def numeric(rows: Any, col: str) -> Any:
    """``rows[col]`` as floats (NaN where not a number)."""
    return pd.to_numeric(rows[col], errors="coerce")


@dataclass
class Context:
    """What every section builder may use: the run, the spec's circuit (loaded, or None) and the
    model's shape (when known by name, else None)."""

    run: Any
    circuit: Any = None
    shape: Any = None


def params_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's kind-specific parameters (everything but ``name`` and ``kind``)."""
    return {k: v for k, v in entry.items() if k not in ("name", "kind")}


def circuit_scores(ctx: Context, values: dict[str, float]) -> dict[str, float]:
    """``values`` restricted to the nodes of the spec's circuit (empty when there is none)."""
    if ctx.circuit is None:
        return {}
    return {n: float(v) for n, v in values.items() if n in ctx.circuit.graph and _finite(v)}
