"""Numbers in reports: confidence intervals and formatting.

Where a result row carries its own interval (``effect_lo/effect_hi`` or ``value_lo/value_hi``:
the analysis's percentile bootstrap over examples, 1,000 resamples, 95%, pairs kept), the report
shows that interval and says *bootstrap*. Where several rows measure the same thing (e.g. one row
per seed), or a row has only ``effect_std`` and ``n``, it shows a Student-t interval and says *t*:
``mean ± t(0.975, n - 1) · sd / sqrt(n)``.

Example:
    >>> round(t_quantile(0.975, 10), 3), round(t_quantile(0.975, 1), 3)
    (2.228, 12.706)
    >>> t_interval([1.0, 2.0, 3.0])
    Interval(value=2.0, lo=-0.48..., hi=4.48..., method='t', n=3)
    >>> fmt(1234567.0), fmt(0.5), fmt(float("nan")), fmt(-0.00012)
    ('1.235e+06', '0.500', 'n/a', '-1.200e-04')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import pandas as pd

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A number with its interval; ``method``: ``"bootstrap"``, ``"t"`` or ``"none"``."""

    value: float
    lo: float
    hi: float
    method: str
    n: int | None = None

    def text(self) -> str:
        """``"1.234 [95% CI 1.0, 1.5; bootstrap]"`` (no bracket when there is no interval).

        >>> Interval(1.0, 0.5, 1.5, "bootstrap", 24).text()
        '1.000 [95% CI 0.500, 1.500; bootstrap, n = 24]'
        """
        if self.method == "none" or not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return fmt(self.value)
        n = f", n = {self.n}" if self.n is not None else ""
        return f"{fmt(self.value)} [95% CI {fmt(self.lo)}, {fmt(self.hi)}; {self.method}{n}]"


def _t_abs_cdf(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (the closed-form series in cos(theta))."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile for ``p`` in (0.5, 1): exact (bisection on the closed-form CDF) up to
    df = 1000, a Cornish-Fisher expansion above (within 1e-6 there)."""
    if df < 1:
        return float("nan")
    if df <= 1000:
        target, lo, hi = 2 * p - 1, 0.0, 1.0
        while _t_abs_cdf(hi, df) < target:
            hi *= 2
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _t_abs_cdf(mid, df) < target else (lo, mid)
        return (lo + hi) / 2
    z = NormalDist().inv_cdf(p)
    v = float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def t_interval(values: Sequence[float]) -> Interval:
    """Mean and t-interval of values (rows measuring the same thing, e.g. one per seed)."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(xs)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "none", 0)
    m = sum(xs) / n
    if n == 1:
        return Interval(m, float("nan"), float("nan"), "none", 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t_quantile(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
    return Interval(m, m - h, m + h, "t", n)


def from_std(mean: float, std: float, n: int) -> Interval:
    """t-interval from a mean, the per-example standard deviation and n.

    >>> from_std(1.0, 2.0, 16).text()
    '1.000 [95% CI -0.066, 2.066; t, n = 16]'
    """
    if n is None or n < 2 or not math.isfinite(std):
        return Interval(mean, float("nan"), float("nan"), "none", n)
    h = t_quantile(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - h, mean + h, "t", n)


def row_interval(rows: Any, column: str = "effect") -> Interval:
    """The interval of ``column`` over ``rows`` that measure one thing.

    One row: its own ``<column>_lo/_hi`` (bootstrap), else ``effect_std``/``n`` (t), else none.
    Several rows (seeds, shards): a t-interval over the rows' values.

    >>> df = pd.DataFrame({"effect": [-1.0], "effect_lo": [-1.5], "effect_hi": [-0.4], "n": [24]})
    >>> row_interval(df).text()
    '-1.000 [95% CI -1.500, -0.400; bootstrap, n = 24]'
    """
    vals = pd.to_numeric(rows[column], errors="coerce").dropna()
    if len(vals) != 1:
        return t_interval(vals.tolist())
    r = rows.loc[vals.index[0]]
    n = _int(r.get("n"))
    lo, hi = r.get(f"{column}_lo"), r.get(f"{column}_hi")
    if _finite(lo) and _finite(hi):
        return Interval(float(vals.iloc[0]), float(lo), float(hi), "bootstrap", n)
    std = r.get(f"{column}_std")
    if _finite(std) and n is not None:
        return from_std(float(vals.iloc[0]), float(std), n)
    return Interval(float(vals.iloc[0]), float("nan"), float("nan"), "none", n)


def fmt(x: Any) -> str:
    """A number for a table cell: 3 decimals, or 4 significant digits in e-notation when very
    large or small; ``n/a`` for missing values; other values as text."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if isinstance(x, int) or (hasattr(x, "is_integer") and isinstance(x, int)):
        return str(x)
    if not math.isfinite(f):
        return "n/a"
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.3e}"
    return f"{f:.3f}"


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _int(x: Any) -> int | None:
    return int(x) if _finite(x) else None
