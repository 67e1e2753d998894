"""The local backend: every pending shard in this process, in order, with one model load.

Example:
    >>> from circuitsteer.runner.local import run_local
    >>> run_local(None, [], lambda *a: None, lambda n: None)   # nothing pending: nothing to do
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from circuitsteer.runner import _kinds


def run_local(
    ctx: Any,
    shards: Sequence[Any],
    on_result: Callable[[int, pd.DataFrame, float], None],
    advance: Callable[[int], None],
) -> None:
    """Run ``shards`` (each with ``index``, ``analysis``, ``payload``) on ``ctx`` (the loaded
    spec); ``on_result(index, rows, seconds)`` stores each one as soon as it is done."""
    for s in shards:
        t0 = time.perf_counter()
        df = _kinds.run(ctx, ctx.spec.analysis(s.analysis), s.payload)
        on_result(s.index, df, time.perf_counter() - t0)
        advance(1)
